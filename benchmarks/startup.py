#!/usr/bin/env python3
"""Start-up cost of the CLI against importing Typer alone (the floor for a Typer app).

Runs each command N times in fresh interpreters, interleaved so that machine noise hits
all of them alike, and reports for each command its median time and its ratio to
`python -c "import typer"`: the median of the per-round ratios (each round times every
command once, back to back), with the 25th-75th percentile of those ratios as the spread.
Goal: `llamactl --help`, `--version` and `list` within 1.5x of importing typer alone.

Bytecode is cached as in an installed copy (the first, unmeasured run writes it), also
when PYTHONDONTWRITEBYTECODE is set in the calling environment; `--no-bytecode` measures
with every module of llamactl compiled on each run instead.

    python benchmarks/startup.py [-n 15] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "import typer": [sys.executable, "-c", "import typer"],
    "llamactl --help": [sys.executable, "-m", "llamactl", "--help"],
    "llamactl --version": [sys.executable, "-m", "llamactl", "--version"],
    "llamactl list": [sys.executable, "-m", "llamactl", "list"],
}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="set PYTHONDONTWRITEBYTECODE=1 (compile on every run)")
    args = parser.parse_args()
    env = dict(os.environ, LLAMACTL_HOME=tempfile.mkdtemp(prefix="llamactl-bench-"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, cmd in COMMANDS.items():  # warm the file cache (and write bytecode) once
        subprocess.run(cmd, env=env, capture_output=True)
    for _ in range(args.n):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=False)
            times[name].append(time.perf_counter() - t0)
    base = times["import typer"]
    print(f"{'command':<22}{'median ms':>10}{'ratio':>8}{'p25-p75':>14}")
    for name, samples in times.items():
        ratios = [t / b for t, b in zip(samples, base)]
        spread = f"{_quantile(ratios, 0.25):.2f}-{_quantile(ratios, 0.75):.2f}"
        print(f"{name:<22}{statistics.median(samples) * 1000:>10.1f}"
              f"{statistics.median(ratios):>8.2f}{spread:>14}")


if __name__ == "__main__":
    main()
