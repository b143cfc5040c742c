"""Peak resident memory of `convert` in a fresh interpreter, against a baseline child that
imports the same modules and reads the same headers but converts nothing.

Peak RSS is the child's own VmHWM from /proc/self/status (Linux): ru_maxrss of children is
carried across exec on Linux, so a child could report its parent's peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

_CHILD = r"""
import json, sys
from pathlib import Path
what, src, out, outtype = sys.argv[1:5]
import gguf, numpy
from llamactl.convert import common, convert_checkpoint
ckpt = common.open_checkpoint(Path(src))
if what == "convert":
    convert_checkpoint(Path(src), Path(out), outtype=outtype)
status = open("/proc/self/status").read().splitlines()
peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "largest": ckpt.largest_tensor_bytes(),
                  "total": sum(t.nbytes for t in ckpt.tensors.values())}))
"""


def _child(what: str, src: Path, out: Path, outtype: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _CHILD, what, str(src), str(out), outtype],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"child {what} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_convert(src: Path, work: Path, outtype: str) -> dict:
    """{baseline, peak, extra, largest, total, ratio = extra / largest} in bytes."""
    base = _child("baseline", src, work / "unused.gguf", outtype)
    out = work / f"measured-{outtype}.gguf"
    got = _child("convert", src, out, outtype)
    out.unlink(missing_ok=True)
    extra = got["peak"] - base["peak"]
    return {"baseline": base["peak"], "peak": got["peak"], "extra": extra, "largest": got["largest"],
            "total": got["total"], "ratio": extra / got["largest"]}
