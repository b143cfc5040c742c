"""Ctrl-C during `convert` or `quantize` exits 130 and leaves nothing that looks like a
finished model (and no temporary file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A ~200 MiB checkpoint and its F32 GGUF: big enough to interrupt half-way."""
    from llamactl.convert import convert_checkpoint
    from tests.kit.checkpoint import build_large_checkpoint

    work = tmp_path_factory.mktemp("interrupt")
    ckpt = build_large_checkpoint(work / "ckpt", intermediate=8192)
    gguf = work / "medium-f32.gguf"
    convert_checkpoint(ckpt, gguf, "f32")
    return ckpt, gguf


def _interrupt(args: list[str], out_dir, wait_for: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "llamactl", *args], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.endswith(wait_for) for p in out_dir.iterdir()):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


@pytest.mark.slow
def test_ctrl_c_during_convert(medium, tmp_path):
    ckpt, _ = medium
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = _interrupt(["convert", str(ckpt), "-o", str(out_dir / "m.gguf"), "--outtype", "f32"], out_dir, ".partial")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_during_quantize(medium, tmp_path):
    _, gguf = medium
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = _interrupt(["quantize", str(gguf), "Q4_K_M", "-o", str(out_dir / "m.gguf")], out_dir, ".partial")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    time.sleep(0.5)
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_quantize_killed_outright_leaves_a_partial_that_the_next_run_removes(medium, tiny_gguf, tmp_path):
    """SIGKILL gives no chance to clean up: the temporary file stays, and the quantizer child
    dies with its parent (it does not go on writing into it). The next run removes it."""
    _, gguf = medium
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "llamactl", "quantize", str(gguf), "Q4_K_M",
                             "-o", str(out_dir / "m.gguf")], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.endswith(".partial") and p.stat().st_size > 0 for p in out_dir.iterdir()):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1.0)
    left = [p for p in out_dir.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".m.gguf.p") and left[0].name.endswith(".partial")
    size = left[0].stat().st_size
    time.sleep(1.0)
    assert left[0].stat().st_size == size            # nobody writes it any more
    done = subprocess.run([sys.executable, "-m", "llamactl", "quantize", str(tiny_gguf), "Q8_0",
                           "-o", str(out_dir / "t.gguf")], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out_dir.iterdir()] == ["t.gguf"]
