#!/usr/bin/env python3
"""Start-up cost of the CLI against importing Typer alone (the floor for a Typer app).

Runs each command N times in fresh interpreters, interleaved so that machine noise hits
all of them alike, and reports medians and the ratio to `python -c "import typer"`.
Goal: `llamactl --help` within 1.5x of importing typer alone.

    python benchmarks/startup.py [-n 15]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=15)
    args = parser.parse_args()
    env = dict(os.environ, LLAMACTL_HOME=tempfile.mkdtemp(prefix="llamactl-bench-"))
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, cmd in COMMANDS.items():  # warm the file cache once
        subprocess.run(cmd, env=env, capture_output=True)
    for _ in range(args.n):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=False)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["import typer"])
    print(f"{'command':<22}{'median ms':>10}{'ratio':>8}")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:<22}{med * 1000:>10.1f}{med / base:>8.2f}")


if __name__ == "__main__":
    main()
