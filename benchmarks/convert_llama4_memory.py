#!/usr/bin/env python3
"""Peak resident memory of converting a Llama 4 checkpoint, against its largest tensor.

Builds a Scout-shaped bf16 checkpoint of a few hundred MB (tests.kit.llama4: 16 experts,
hidden 1024, expert width 2048, 2 MoE layers, one shard per layer; its largest tensor is
one layer's fused `gate_up_proj`, 128 MiB), then runs in fresh interpreters:
- baseline: the same imports and `open_checkpoint` (headers only), no conversion;
- convert: `convert_checkpoint(..., outtype)` for bf16 (exact copy) and f32 (converted).
Each child reports its own peak RSS (VmHWM; Linux only). The figure of merit is
(peak - baseline) / largest tensor: the memory the conversion itself needs, in units of
the largest tensor. Goal (issue 8): near one layer's expert tensor or less; streaming
expert by expert keeps it far below.

    python benchmarks/convert_llama4_memory.py [--layers 2] [--hidden 1024] [--ffn 2048] [--experts 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# VmHWM (this process's own high-water mark), not ru_maxrss: Linux carries ru_maxrss
# across exec, so a child would inherit the parent's peak.
CHILD = r"""
import json, sys
from pathlib import Path
mode, src, out, outtype = sys.argv[1:5]
from llamactl.convert import common, convert_checkpoint
import gguf, numpy
ckpt = common.open_checkpoint(Path(src))
if mode == "convert":
    convert_checkpoint(Path(src), Path(out), outtype=outtype)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss": hwm,
                  "largest": ckpt.largest_tensor_bytes(),
                  "total": sum(t.nbytes for t in ckpt.tensors.values())}))
"""


def run_child(mode: str, src: Path, out: Path, outtype: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out), outtype],
                          capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(src: Path, work: Path, outtypes=("bf16", "f32")) -> dict:
    base = run_child("baseline", src, work / "none.gguf", "bf16")
    rows = {}
    for outtype in outtypes:
        out = work / f"out-{outtype}.gguf"
        got = run_child("convert", src, out, outtype)
        out.unlink()
        extra = got["peak_rss"] - base["peak_rss"]
        rows[outtype] = {"peak_rss": got["peak_rss"], "extra": extra, "ratio": extra / got["largest"],
                         "peak_ratio": got["peak_rss"] / got["largest"]}
    return {"baseline_rss": base["peak_rss"], "largest": base["largest"], "total": base["total"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=16)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.kit.llama4 import build_large_llama4_checkpoint

    with tempfile.TemporaryDirectory(prefix="llamactl-l4mem-") as tmp:
        work = Path(tmp)
        src = build_large_llama4_checkpoint(work / "ckpt", n_layers=args.layers, hidden=args.hidden,
                                            expert_ffn=args.ffn, n_experts=args.experts)
        res = measure(src, work)
    mib = 2**20
    print(f"checkpoint: {res['total'] / mib:.0f} MiB, largest tensor {res['largest'] / mib:.0f} MiB; "
          f"baseline RSS {res['baseline_rss'] / mib:.0f} MiB")
    print(f"{'outtype':<8}{'peak MiB':>10}{'extra MiB':>11}{'extra/largest':>15}{'peak/largest':>14}")
    for outtype, row in res["rows"].items():
        print(f"{outtype:<8}{row['peak_rss'] / mib:>10.0f}{row['extra'] / mib:>11.0f}"
              f"{row['ratio']:>15.2f}{row['peak_ratio']:>14.2f}")


if __name__ == "__main__":
    main()
