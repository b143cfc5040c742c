"""Roofline for generation on the CPU: how close llamactl's tg comes to the memory bandwidth.

    python benchmarks/roofline.py [--model X.gguf] [-n 128] [-r 5] [-t THREADS] [--json]

Generating one token reads every weight once (the token embedding table only for one row;
the KV cache of a short context is negligible beside the weights), so the weight bytes read
per token divided by the time per token is the bandwidth tg achieves. That figure is
compared with a copy-bandwidth probe on the same machine: numpy copies of a 512 MiB buffer
split across the same number of threads, counting bytes read plus bytes written (STREAM's
"copy" convention). The report is the fraction of the copy bandwidth tg reaches.

Without --model it builds the same synthetic Llama-shaped Q8_0 GGUF (~260 MB, random
weights) as engine_overhead.py. tg is measured through `llamactl.bench` (the engine chat
uses), one warm-up then `-r` counted runs; the probe runs before and after, and the best of
each is used as well as the mean, since a shared machine only ever slows either down.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def weight_bytes_per_token(model: Path) -> tuple[int, int]:
    """(bytes read per generated token, total tensor bytes)."""
    from llamactl.gguf_info import read_gguf

    info = read_gguf(model)
    names = {t.name for t in info.tensors}
    tied = "output.weight" not in names
    per_token = 0
    for t in info.tensors:
        if t.name == "token_embd.weight" and not tied:
            rows = t.shape[1] if len(t.shape) > 1 else 1
            per_token += t.nbytes // max(rows, 1)  # one row of the table
        else:
            per_token += t.nbytes
    return per_token, info.tensor_bytes


def copy_bandwidth(threads: int, mib: int = 512, reps: int = 5) -> list[float]:
    """Bytes per second (read + write) of parallel numpy copies of a `mib` MiB buffer."""
    import numpy as np

    n = mib * (1 << 20) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def part(b):
        np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]])

    out = []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, bounds))  # touch the pages once
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(part, bounds))
            out.append(2 * src.nbytes / (time.perf_counter() - t0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="tg bytes/s against the machine's copy bandwidth")
    ap.add_argument("--model", type=Path)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from llamactl import bench, machine
    from llamactl.engine import Engine, EngineOptions
    from llamactl.load import LoadSpec

    tmp = None
    model = a.model
    if model is None:
        from synth_gguf import build_llama_gguf

        tmp = tempfile.TemporaryDirectory(prefix="llamactl-roofline-")
        model = build_llama_gguf(Path(tmp.name) / "synthetic-llama-q8_0.gguf")

    per_token, total = weight_bytes_per_token(model)
    bw = copy_bandwidth(a.threads)
    test = bench.TestSpec(n_gen=a.n)
    engine = Engine.load(model, EngineOptions(load=LoadSpec(ctx=bench.default_ctx([test]), gpu_layers=0,
                                                            threads=a.threads)))
    res = bench.bench_test(engine, test, a.reps, warmup=True, rng=random.Random(3))
    engine.close()
    bw += copy_bandwidth(a.threads)

    tps_mean, tps_best = res["tps_mean"], max(res["samples_tps"])
    bw_mean, bw_best = statistics.fmean(bw), max(bw)
    doc = {
        "model": str(model if a.model else "synthetic Llama-shaped Q8_0 (hidden 1024, 16 layers)"),
        "weight_bytes_per_token": per_token, "tensor_bytes": total, "threads": a.threads,
        "test": test.name, "tg_tps_mean": tps_mean, "tg_tps_sd": res["tps_sd"], "tg_tps_best": tps_best,
        "tg_bytes_per_s_mean": per_token * tps_mean, "tg_bytes_per_s_best": per_token * tps_best,
        "copy_bytes_per_s_mean": bw_mean, "copy_bytes_per_s_best": bw_best,
        "fraction_mean": per_token * tps_mean / bw_mean, "fraction_best": per_token * tps_best / bw_best,
        "machine": machine.machine_info(),
    }
    if tmp is not None:
        tmp.cleanup()
    if a.json:
        print(json.dumps(doc, indent=2))
    else:
        gb = 1e9
        print(f"weights read per token: {per_token / 1e6:.1f} MB (of {total / 1e6:.1f} MB of tensors)")
        print(f"{test.name} ({a.threads} threads): {tps_mean:.2f} ± {res['tps_sd']:.2f} t/s "
              f"(best {tps_best:.2f}) -> {per_token * tps_mean / gb:.2f} GB/s "
              f"(best {per_token * tps_best / gb:.2f})")
        print(f"copy bandwidth ({a.threads} threads, read+write): {bw_mean / gb:.2f} GB/s "
              f"(best {bw_best / gb:.2f})")
        print(f"fraction of copy bandwidth reached by tg: {doc['fraction_mean']:.2f} (means), "
              f"{doc['fraction_best']:.2f} (bests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
