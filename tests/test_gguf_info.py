"""The GGUF header reader: same answers as gguf.GGUFReader, tokenizer arrays skipped,
split models, and one-line errors for missing, foreign and truncated files."""

from __future__ import annotations

import pytest

from llamactl.errors import IntegrityError, NotFound
from llamactl.gguf_info import GGML_TYPES, read_gguf
from tests.synthetic.tiny import write_tiny_gguf
from tests.synthetic.writer import SPECS, expected_totals, tensor_inventory

# llama.cpp's own figures for the real Q4_K_M files (llama-bench / print_info)
REAL_PARAMS = {
    "llama3.2-1b": 1_235_814_432,
    "llama3.2-3b": 3_212_749_888,
    "llama3.3-70b": 70_553_706_560,
    "llama4-scout": 107_769_861_184,
    "llama4-maverick": 400_711_848_960,
}


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gi") / "moe.gguf", arch="llama4", n_layer=2,
                           n_expert=4, n_expert_used=2)


def test_matches_gguf_reader(tiny_moe):
    import gguf

    info = read_gguf(tiny_moe)
    reader = gguf.GGUFReader(tiny_moe)
    ref = {t.name: t for t in reader.tensors}
    assert [t.name for t in info.tensors] == [t.name for t in reader.tensors]
    data_start = min(t.data_offset for t in reader.tensors)
    for t in info.tensors:
        r = ref[t.name]
        assert t.shape == tuple(int(x) for x in r.shape)
        assert t.ggml_type == int(r.tensor_type)
        assert t.nbytes == int(r.n_bytes)
        assert t.n_elements == int(r.n_elements)
        assert data_start + t.offset == r.data_offset
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        assert info.metadata[field.name] == field.contents(), field.name
    for name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert name not in info.metadata
        assert info.array_lengths[name] == len(reader.fields[name].data)
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert info.architecture == "llama4" and info.expert_count == 4 and info.expert_used_count == 2
    assert info.has_chat_template and info.file_type == "F32"


def test_type_table_agrees_with_gguf():
    import gguf

    for tid, (name, block, size) in GGML_TYPES.items():
        qt = gguf.GGMLQuantizationType(tid)
        assert qt.name == name
        assert gguf.GGML_QUANT_SIZES[qt] == (block, size)


@pytest.mark.parametrize("key", list(SPECS))
def test_real_model_inventory(synthetic_gguf, key):
    info = read_gguf(synthetic_gguf(key))
    params, nbytes = expected_totals(key)
    assert info.n_params == params == REAL_PARAMS[key]
    assert info.tensor_bytes == nbytes
    assert [t.name for t in info.tensors] == [n for n, _, _ in tensor_inventory(SPECS[key])]
    spec = SPECS[key]
    # the tokenizer arrays are skipped, their lengths kept
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert "tokenizer.ggml.merges" not in info.metadata
    assert info.array_lengths["tokenizer.ggml.tokens"] == spec.vocab
    assert info.array_lengths["tokenizer.ggml.merges"] == spec.n_merges
    assert info.vocab_size == spec.vocab
    assert info.block_count == spec.n_layer
    assert info.file_type == "Q4_K_M"
    assert len(info.paths) == spec.split
    assert info.to_dict()["n_params"] == params


def test_split_model_reads_every_part(synthetic_gguf):
    info = read_gguf(synthetic_gguf("llama4-maverick"))
    assert [p.name for p in info.paths] == [
        f"llama4-maverick-Q4_K_M-{i:05d}-of-00005.gguf" for i in range(1, 6)]
    assert {t.file for t in info.tensors} == set(info.paths)
    # any part names the whole model
    again = read_gguf(info.paths[3])
    assert again.n_params == info.n_params


def test_missing_split_part_is_not_found(synthetic_gguf, tmp_path):
    first = synthetic_gguf("llama4-scout")
    copy = tmp_path / first.name
    copy.symlink_to(first)  # the second part is not linked (a copy would read GBs of holes)
    with pytest.raises(NotFound, match="00002-of-00002"):
        read_gguf(copy)


def test_missing_file(tmp_path):
    with pytest.raises(NotFound) as exc:
        read_gguf(tmp_path / "nope.gguf")
    assert exc.value.exit_code == 4


def test_not_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(IntegrityError, match="not a GGUF"):
        read_gguf(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(IntegrityError):
        read_gguf(empty)


def test_truncated_data_and_header(tiny_moe, tmp_path):
    raw = tiny_moe.read_bytes()
    cut_data = tmp_path / "cut-data.gguf"
    cut_data.write_bytes(raw[:-1000])
    with pytest.raises(IntegrityError, match="truncated") as exc:
        read_gguf(cut_data)
    assert exc.value.exit_code == 7
    cut_header = tmp_path / "cut-header.gguf"
    cut_header.write_bytes(raw[:3000])  # inside the token list
    with pytest.raises(IntegrityError, match="truncated"):
        read_gguf(cut_header)
