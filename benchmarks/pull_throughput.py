#!/usr/bin/env python3
"""What llamactl's pull costs over huggingface_hub's own download, on the loopback Hub.

Serves one file of SIZE MiB from tests/hubsim on 127.0.0.1 and times, interleaved N times
each into fresh caches:
  hf_hub_download                  huggingface_hub alone (checks only the size)
  hf_hub_download + sha256 pass    what checking the hash afterwards would cost
  llamactl pull                    resumable download with the sha256 computed as it writes
                                   (in-process: hub.pull_model, no CLI start-up)
and reports medians and ratios to hf_hub_download. Loopback speed makes the hashing share
look as large as it can be; over a real network the ratio moves towards 1. llamactl also
fsyncs each file before moving it into place (a crash never leaves a torn file under a
trusted name); on the development machine that fsync is most of the difference (measured
2026-11-29, 128 MiB, medians of 5: hf 1.35 s, hf + sha256 pass 1.47 s (1.10x), llamactl
1.58 s (1.17x); without the fsync llamactl matched hf_hub_download).

    python benchmarks/pull_throughput.py [--size 256] [-n 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPO = "bench/Llama-Bench-GGUF"
NAME = "Llama-Bench-Q4_K_M.gguf"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256, help="file size in MiB")
    parser.add_argument("-n", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llamactl-pull-bench-"))
    src = tmp / "src.bin"
    with open(src, "wb") as fh:
        block = os.urandom(1 << 20)
        for _ in range(args.size):
            fh.write(block)

    from tests.hubsim.server import HubSim

    sim = HubSim(tmp / "files").start()
    sim.add_repo(REPO, {NAME: src}, license="apache-2.0")
    os.environ.update(HF_ENDPOINT=sim.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", LLAMACTL_HOME=str(tmp / "home"))

    from huggingface_hub import hf_hub_download

    from llamactl import refs
    from llamactl.models.pull import pull_gguf

    def fresh(label: str) -> Path:
        cache = tmp / f"hf-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(tmp / "home", ignore_errors=True)
        os.environ["HF_HOME"] = str(cache)
        return cache / "hub"

    def hf_only() -> None:
        cache = fresh("hf")
        hf_hub_download(REPO, NAME, cache_dir=str(cache), endpoint=sim.url)

    def hf_then_hash() -> None:
        cache = fresh("hfh")
        path = hf_hub_download(REPO, NAME, cache_dir=str(cache), endpoint=sim.url)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
        assert h.hexdigest() == sim.repos[REPO].files[NAME].sha256

    def llamactl_pull() -> None:
        fresh("llamactl")
        entry, status = pull_gguf(refs.parse(f"hf.co/{REPO}:q4_k_m"))
        assert status == "pulled"

    runs = {"hf_hub_download": hf_only, "hf_hub_download + sha256 pass": hf_then_hash,
            "llamactl pull": llamactl_pull}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm up
        fn()
    for _ in range(args.n):
        for label, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    sim.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(times["hf_hub_download"])
    print(f"file: {args.size} MiB, {args.n} runs each (medians)")
    print(f"{'method':<32}{'seconds':>9}{'MiB/s':>9}{'ratio':>8}")
    for label, samples in times.items():
        med = statistics.median(samples)
        print(f"{label:<32}{med:>9.2f}{args.size / med:>9.0f}{med / base:>8.2f}")


if __name__ == "__main__":
    main()
