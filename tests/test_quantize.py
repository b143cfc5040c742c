"""`quantize`: through llama.cpp's llama_model_quantize; each listed type loads and
generates, its size is in the type's bits-per-weight range; the gates (imatrix,
requantize, disk) act before any work; nothing half-written is left behind."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tests.kit.llama_helpers import load_llama, split_gguf, write_imatrix

# Bits per weight over all tensor bytes of the tiny model. The lower bound is the type's own
# block format (Q4_K: 144 bytes per 256 weights = 4.5); mixes put some tensors in larger types
# (Q4_K_M: output, attn_v, ffn_down in Q6_K), which on a 2-layer model with a 511-token
# vocabulary weighs more than on a real one; the 1-D norms stay F32 (0.1% of weights).
BPW = {
    "Q8_0": (8.5, 8.6), "Q6_K": (6.5625, 6.7), "Q5_K_M": (5.5, 6.0), "Q5_K_S": (5.5, 5.8),
    "Q4_K_M": (4.5, 5.1), "Q4_K_S": (4.5, 4.9), "Q4_0": (4.5, 4.8), "Q3_K_M": (3.4375, 4.3),
    "Q2_K": (2.625, 3.5), "IQ4_XS": (4.25, 4.6), "IQ4_NL": (4.5, 4.8), "BF16": (16.0, 16.1),
    "F16": (16.0, 16.1),
}
# (IQ1_S and IQ3_XXS work the same way but take 10-30 s each here: llama.cpp builds their
# search grids in every process.)
IMATRIX_BPW = {"IQ2_XXS": (2.0625, 2.7), "Q2_K_S": (2.625, 3.2)}


def generates(path) -> bool:
    llm = load_llama(path)
    try:
        out = llm.create_completion("The quick brown", max_tokens=6, temperature=0.0)
        return out["usage"]["completion_tokens"] > 0
    finally:
        llm.close()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_tiny_gguf_q8_loads_and_generates(tiny_gguf_q8):
    from llamactl.gguf_info import read_gguf

    info = read_gguf(tiny_gguf_q8)
    assert info.file_type == "Q8_0"
    assert {t.type_name for t in info.tensors if len(t.shape) == 2} == {"Q8_0"}
    assert generates(tiny_gguf_q8)


@pytest.mark.parametrize("qtype", list(BPW))
def test_listed_types_load_generate_and_fit_their_size(qtype, tiny_gguf, tmp_path):
    from llamactl.gguf_info import read_gguf
    from llamactl.quantize import quantize_gguf

    out = tmp_path / "m.gguf"
    result = quantize_gguf(tiny_gguf, out, qtype.lower())   # type names are case-insensitive
    assert result.qtype == qtype and result.path == out
    info = read_gguf(out)
    assert info.file_type == qtype
    assert info.n_params == read_gguf(tiny_gguf).n_params
    low, high = BPW[qtype]
    assert low <= result.bits_per_weight <= high, result.bits_per_weight
    assert generates(out)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("qtype", ["IQ1_S", "IQ2_XXS", "IQ2_M", "IQ3_XXS", "Q2_K_S"])
def test_imatrix_types_refused_without_one(qtype, tiny_gguf, tmp_path, cli_here):
    out = tmp_path / "m.gguf"
    proc = cli_here("quantize", str(tiny_gguf), qtype, "-o", str(out))
    assert proc.returncode == 2
    assert "importance matrix" in proc.err and "--imatrix" in proc.err
    assert proc.out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("qtype", list(IMATRIX_BPW))
def test_imatrix_types_work_with_an_imatrix(qtype, tiny_gguf, tmp_path, cli_here):
    imatrix = write_imatrix(tiny_gguf, tmp_path / "tiny.imatrix.gguf")
    out = tmp_path / "m.gguf"
    proc = cli_here("quantize", str(tiny_gguf), qtype, "-o", str(out), "--imatrix", str(imatrix), "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["qtype"] == qtype and doc["imatrix"] == str(imatrix)
    low, high = IMATRIX_BPW[qtype]
    assert low <= doc["bits_per_weight"] <= high
    assert generates(out)


def test_legacy_imatrix_dat_is_read(tiny_gguf, tmp_path):
    """The legacy binary format (imatrix.dat) gives the same values as the GGUF one."""
    import numpy as np

    from llamactl.imatrix import load_imatrix
    from llamactl.quantize import quantize_gguf

    gguf_im = load_imatrix(write_imatrix(tiny_gguf, tmp_path / "a.imatrix.gguf"))
    dat = tmp_path / "imatrix.dat"
    ncall = 10
    with open(dat, "wb") as fh:
        fh.write(struct.pack("<i", len(gguf_im)))
        for name, values in gguf_im.items():
            raw = name.encode()
            fh.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values)))
            fh.write((np.asarray(values, dtype="<f4") * ncall).tobytes())
        fh.write(struct.pack("<i", ncall))
    legacy = load_imatrix(dat)
    assert legacy.keys() == gguf_im.keys()
    for name in legacy:
        np.testing.assert_allclose(legacy[name], gguf_im[name], rtol=1e-6)
    assert generates(quantize_gguf(tiny_gguf, tmp_path / "m.gguf", "IQ2_XXS", imatrix=dat).path)


def test_failure_inside_llama_cpp_leaves_nothing(tiny_gguf, tmp_path, cli_here):
    """An imatrix without an entry for one tensor: llama.cpp stops half-way; the error is
    one line, exit 1, and neither the output nor a temporary file is left."""
    imatrix = write_imatrix(tiny_gguf, tmp_path / "partial.imatrix.gguf", skip=("blk.1.ffn_up.weight",))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = cli_here("quantize", str(tiny_gguf), "IQ2_XXS", "-o", str(out_dir / "m.gguf"), "--imatrix", str(imatrix))
    assert proc.returncode == 1
    errors = [line for line in proc.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "importance matrix" in errors[0] and "blk.1.ffn_up.weight" in errors[0]
    assert "Traceback" not in proc.err
    assert list(out_dir.iterdir()) == []


def test_requantize_needs_the_flag(tiny_gguf_q8, tmp_path, cli_here):
    src = tmp_path / "q8.gguf"
    shutil.copy(tiny_gguf_q8, src)
    out = tmp_path / "q4.gguf"
    proc = cli_here("quantize", str(src), "Q4_0", "-o", str(out))
    assert proc.returncode == 1
    assert "already quantized" in proc.err and "quality" in proc.err and "--allow-requantize" in proc.err
    assert not out.exists() and leftovers(tmp_path) == []
    proc = cli_here("quantize", str(src), "Q4_0", "-o", str(out), "--allow-requantize")
    assert proc.returncode == 0, proc.err
    assert proc.out.strip() == str(out)
    assert generates(out)


def test_dry_run_prints_the_size_and_writes_nothing(tiny_gguf, tmp_path, cli_here):
    from llamactl.gguf_info import read_gguf
    from llamactl.quantize import quantize_gguf

    src = tmp_path / "tiny-f32.gguf"
    shutil.copy(tiny_gguf, src)
    proc = cli_here("quantize", str(src), "Q4_K_M", "--dry-run")
    assert proc.returncode == 0, proc.err
    estimate = int(proc.out.strip())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-f32.gguf"]
    real = read_gguf(quantize_gguf(src, None, "Q4_K_M").path).tensor_bytes
    assert abs(estimate - real) <= 0.02 * real + 8192


def test_split_input_becomes_one_file(tiny_gguf, tmp_path, cli_here):
    from llamactl.gguf_info import read_gguf

    parts = split_gguf(tiny_gguf, tmp_path / "split", max_tensors=8)
    assert len(parts) == 3 and parts[0].name.endswith("-00001-of-00003.gguf")
    proc = cli_here("quantize", str(parts[0]), "q8_0")
    assert proc.returncode == 0, proc.err
    out = Path(proc.out.strip())
    assert out.name == parts[0].name.split("-00001-of-")[0].replace("-f32", "") + "-Q8_0.gguf"
    info = read_gguf(out)
    assert len(info.paths) == 1 and len(info.tensors) == len(read_gguf(tiny_gguf).tensors)
    assert generates(out)


def test_disk_space_checked_first(tiny_gguf, tmp_path, cli_here):
    out = tmp_path / "m.gguf"
    proc = cli_here("quantize", str(tiny_gguf), "Q4_K_M", "-o", str(out), env={"LLAMACTL_FAKE_FREE_BYTES": "1000"})
    assert proc.returncode == 8
    assert "disk space" in proc.err
    assert list(tmp_path.iterdir()) == []


def test_leave_output_tensor_and_pure(tiny_gguf, tmp_path):
    from llamactl.gguf_info import read_gguf
    from llamactl.quantize import quantize_gguf

    def types(path):
        return {t.name: t.type_name for t in read_gguf(path).tensors}

    mixed = types(quantize_gguf(tiny_gguf, tmp_path / "mix.gguf", "Q4_K_M").path)
    assert mixed["output.weight"] == "Q6_K" and "Q4_K" in mixed.values()
    kept = types(quantize_gguf(tiny_gguf, tmp_path / "keep.gguf", "Q4_K_M", leave_output_tensor=True).path)
    assert kept["output.weight"] == "F32"
    pure = types(quantize_gguf(tiny_gguf, tmp_path / "pure.gguf", "Q4_K_M", pure=True).path)
    assert {v for k, v in pure.items() if k.startswith("blk.") and not k.endswith("norm.weight")} == {"Q4_K"}


def test_bad_arguments(tiny_gguf, tmp_path, cli_here):
    proc = cli_here("quantize", str(tiny_gguf), "Q9_Z")
    assert proc.returncode == 2 and "unknown quantization type" in proc.err
    proc = cli_here("quantize", str(tmp_path / "missing.gguf"), "Q8_0")
    assert proc.returncode == 4
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf at all" * 10)
    proc = cli_here("quantize", str(not_gguf), "Q8_0", "-o", str(tmp_path / "y.gguf"))
    assert proc.returncode == 7 and not (tmp_path / "y.gguf").exists()
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep me")
    proc = cli_here("quantize", str(tiny_gguf), "Q8_0", "-o", str(existing))
    assert proc.returncode == 1 and "--force" in proc.err
    assert existing.read_bytes() == b"keep me"


def test_registered_model_is_quantized_and_registered(tiny_gguf, cli_here, isolated_home):
    from llamactl import registry

    registry.put({"name": "tiny:f32", "model": "tiny", "tag": "f32", "source": "local",
                  "files": [{"filename": tiny_gguf.name, "path": str(tiny_gguf), "size": tiny_gguf.stat().st_size}],
                  "path": str(tiny_gguf), "size": tiny_gguf.stat().st_size, "license": "llama3.2"})
    proc = cli_here("quantize", "tiny:f32", "q8_0")
    assert proc.returncode == 0, proc.err
    entry = registry.get("tiny:q8_0")
    assert entry is not None and entry["quantized_from"] == "tiny:f32"
    assert entry["license"] == "llama3.2" and entry["files"][0]["sha256"]
    path = Path(entry["path"])
    assert proc.out.strip() == str(path) and path.is_relative_to(isolated_home)
    assert generates(path)
    listed = json.loads(cli_here("list", "--json").out)
    assert "tiny:q8_0" in [e["name"] for e in listed]
    again = cli_here("quantize", "tiny:f32", "q8_0")
    assert again.returncode == 1 and "already on this machine" in again.err
    proc = cli_here("quantize", "nothing-here:f16", "q8_0")
    assert proc.returncode == 4


def test_progress_reports_every_tensor(tiny_gguf, tmp_path, cli_here):
    from llamactl.gguf_info import read_gguf
    from llamactl.quantize import quantize_gguf

    seen = []
    quantize_gguf(tiny_gguf, tmp_path / "a.gguf", "Q8_0", progress=lambda *event: seen.append(event))
    n = len(read_gguf(tiny_gguf).tensors)
    assert [i for _, i, _ in seen] == list(range(1, n + 1)) and {c for _, _, c in seen} == {n}
    assert {name for name, _, _ in seen} == {t.name for t in read_gguf(tiny_gguf).tensors}
    proc = cli_here("quantize", str(tiny_gguf), "Q8_0", "-o", str(tmp_path / "b.gguf"))
    assert proc.returncode == 0, proc.err
    assert f"quantizing: tensor {n} of {n}" in proc.err
    assert proc.out.strip() == str(tmp_path / "b.gguf")      # stdout: the path only


ATOMIC_WRITER = r"""
import pathlib, sys, time
from llamactl.fsutil import atomic_path
with atomic_path(pathlib.Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half a model")
    print(tmp.name, flush=True)
    time.sleep(300)
"""


def test_stale_partial_files_of_killed_runs_are_removed_and_live_ones_kept(tiny_gguf, tiny_checkpoint, tmp_path):
    """A writer killed with SIGKILL leaves its `.NAME.pPID-START.XXXX.partial`; the next
    quantize or convert into that folder deletes it, and leaves a live writer's alone."""
    import os
    import signal
    import subprocess
    import sys

    from llamactl.convert import convert_checkpoint
    from llamactl.quantize import quantize_gguf
    from tests.conftest import REPO

    out = tmp_path / "out"
    out.mkdir()

    def writer(name):
        proc = subprocess.Popen([sys.executable, "-c", ATOMIC_WRITER, str(out / name)], cwd=REPO,
                                stdout=subprocess.PIPE, env=dict(os.environ))
        return proc, proc.stdout.readline().decode().strip()

    killed, killed_tmp = writer("a.gguf")
    live, live_tmp = writer("b.gguf")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert sorted(leftovers(out)) == sorted([killed_tmp, live_tmp])
        assert quantize_gguf(tiny_gguf, out / "q.gguf", "Q8_0").path == out / "q.gguf"
        assert leftovers(out) == [live_tmp]            # the dead writer's file went, the live one's stayed
        killed, killed_tmp = writer("c.gguf")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        convert_checkpoint(tiny_checkpoint, out / "c.gguf", "f16")
        assert leftovers(out) == [live_tmp]
    finally:
        live.kill()
        live.wait(timeout=30)
