"""Quantizing a converted Llama 4 GGUF with `llamactl quantize`, and split output
(`--split-max-size`) as llama.cpp's `-0000N-of-0000M.gguf` parts that llama.cpp loads from
the first part."""

from __future__ import annotations

import pytest

from tests.kit.llama_helpers import all_logits, load_llama, read_meta


def _generate(path, n: int = 8) -> list[int]:
    llm = load_llama(path)
    try:
        ids = llm.tokenize(b"They'll see the CamelCase words", add_bos=True, special=True)
        out = []
        for tok in llm.generate(ids, temp=0.0, top_k=1):
            out.append(tok)
            if len(out) == n:
                break
        return out
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("qtype,main_type", [("Q8_0", "Q8_0"), ("Q4_K_M", "Q4_K")])
def test_quantized_scout_loads_and_generates(qtype, main_type, llama4_gguf_factory, cli, tmp_path):
    src = llama4_gguf_factory("scout", "f16", dtype="bfloat16")
    out = tmp_path / f"scout-{qtype}.gguf"
    proc = cli("quantize", str(src), qtype, "-o", str(out))
    assert proc.returncode == 0, proc.err
    assert proc.out.strip() == str(out)
    meta, tensors = read_meta(out)
    assert meta["general.architecture"] == "llama4"
    # the routed experts are quantized (K-quants need rows of 256: the kit's widths are 256)
    assert tensors["blk.0.ffn_gate_exps.weight"].tensor_type.name == main_type
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32"   # the router stays F32
    assert len(_generate(out)) == 8


def _quantized(llama4_gguf_factory, cli, tmp_path):
    src = llama4_gguf_factory("scout", "f16", dtype="bfloat16")
    single = tmp_path / "single" / "scout-q4_k_m.gguf"
    single.parent.mkdir()
    assert cli("quantize", str(src), "Q4_K_M", "-o", str(single)).returncode == 0
    return src, single


@pytest.mark.slow
def test_split_output_loads_from_the_first_part(llama4_gguf_factory, llama4_checkpoint_factory, llama4_prompt_ids,
                                                cli, tmp_path):
    src, single = _quantized(llama4_gguf_factory, cli, tmp_path)
    out = tmp_path / "split" / "scout-q4_k_m.gguf"
    out.parent.mkdir()
    proc = cli("quantize", str(src), "Q4_K_M", "-o", str(out), "--split-max-size", "1M", "--json")
    assert proc.returncode == 0, proc.err
    import json

    doc = json.loads(proc.out)
    parts = sorted(out.parent.iterdir())
    n = len(parts)
    assert n >= 3
    assert [p.name for p in parts] == [f"scout-q4_k_m-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert doc["parts"] == [str(p) for p in parts] and doc["path"] == str(parts[0])
    assert not out.exists()  # the single file is replaced by its parts
    assert all(p.stat().st_size <= 1_000_000 for p in parts)
    # llama.cpp's split keys in every part; all other metadata in the first
    single_meta, single_tensors = read_meta(single)
    seen = []
    for i, part in enumerate(parts):
        meta, tensors = read_meta(part)
        assert meta["split.no"] == i and meta["split.count"] == n
        assert meta["split.tensors.count"] == len(single_tensors)
        seen += list(tensors)
        if i == 0:
            assert {k: v for k, v in meta.items() if not k.startswith("split.")} == single_meta
    assert seen == list(single_tensors)
    # llama.cpp loads the set from the first part and computes exactly what the single file does
    ids = llama4_prompt_ids(llama4_checkpoint_factory("scout", dtype="bfloat16"))[:64]
    a, b = load_llama(single, logits_all=True), load_llama(parts[0], logits_all=True)
    try:
        import numpy as np

        np.testing.assert_array_equal(all_logits(a, ids), all_logits(b, ids))
    finally:
        a.close()
        b.close()


def test_split_gguf_round_trips_metadata_and_fits_in_one(llama4_gguf_factory, tmp_path):
    from llamactl.gguf_split import split_gguf

    src = llama4_gguf_factory("maverick", "f32")
    # everything fits: one plain file, no split keys
    one = split_gguf(src, tmp_path / "one.gguf", "1G")
    assert one == [tmp_path / "one.gguf"]
    meta_src, ten_src = read_meta(src)
    meta_one, ten_one = read_meta(one[0])
    assert meta_one == meta_src and list(ten_one) == list(ten_src)
    assert one[0].read_bytes() == src.read_bytes()
    # a tensor larger than the limit gets a part of its own; nothing is left behind
    parts = split_gguf(src, tmp_path / "many" / "m.gguf", 300_000)
    assert len(parts) > 3
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted(p.name for p in parts)


def test_split_size_errors_exit_2_before_any_work(cli, tmp_path, llama4_gguf_factory):
    src = llama4_gguf_factory("maverick", "f32")
    bad = cli("quantize", str(src), "Q8_0", "-o", str(tmp_path / "x.gguf"), "--split-max-size", "banana")
    assert bad.returncode == 2 and "not a size" in bad.err
    registered = cli("quantize", "llama3.2-1b", "Q8_0", "--split-max-size", "48G")
    assert registered.returncode == 2 and "--split-max-size" in registered.err
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    from llamactl.errors import UsageError
    from llamactl.gguf_split import parse_size

    assert parse_size("48G") == 48 * 10**9
    assert parse_size("2000M") == 2 * 10**9
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("40GiB") == 40 * 2**30
    assert parse_size("123456") == 123456
    for bad in ("", "G", "-1G", "0", "5 parsecs"):
        with pytest.raises(UsageError):
            parse_size(bad)
