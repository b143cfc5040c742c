#!/usr/bin/env python3
"""Peak resident memory of `convert` (Llama 3) against the checkpoint's largest tensor.

Builds a Llama 3 checkpoint of about 400 MiB with numpy (tests.kit.checkpoint.
build_large_checkpoint: 2 layers, hidden 1024, FFN 16384, two shards; largest tensors
64 MiB in float32), plus the same shapes in bfloat16, and converts each in a fresh
interpreter. A baseline child imports the same modules and reads the same headers but
converts nothing. Reported: peak RSS (VmHWM) of each, and (peak - baseline) / largest
tensor — the memory the conversion itself needs, in units of the largest tensor. The goal
(issue 4) is below 1.5x; reading tensors memory-mapped one at a time and writing them in
row blocks of 4 MiB keeps it far below, whatever the model's total size.

    python benchmarks/convert_memory.py [--hidden 1024] [--ffn 16384] [--layers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=16384)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.kit.checkpoint import build_large_checkpoint
    from tests.kit.memory import measure_convert

    mib = 2**20
    print(f"{'source':<10}{'outtype':<9}{'total MiB':>10}{'largest MiB':>12}{'baseline MiB':>13}"
          f"{'peak MiB':>10}{'extra/largest':>15}")
    with tempfile.TemporaryDirectory(prefix="llamactl-convmem-") as tmp:
        work = Path(tmp)
        for dtype, outtypes in (("float32", ("f16", "bf16", "f32")), ("bfloat16", ("bf16", "f16"))):
            src = build_large_checkpoint(work / dtype, hidden=args.hidden, intermediate=args.ffn,
                                         layers=args.layers, dtype=dtype)
            for outtype in outtypes:
                r = measure_convert(src, work, outtype)
                print(f"{dtype:<10}{outtype:<9}{r['total'] / mib:>10.0f}{r['largest'] / mib:>12.0f}"
                      f"{r['baseline'] / mib:>13.1f}{r['peak'] / mib:>10.1f}{r['ratio']:>15.2f}")


if __name__ == "__main__":
    main()
