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
