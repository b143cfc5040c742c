"""Full-shape synthetic GGUFs that llama.cpp really loads and runs on a GPU: the exact tensor
inventory and header of the real Llama models (tests/synthetic/writer.py: Llama 3.2 1B/3B,
3.3 70B, Llama 4 Scout), with random weights whose quantization scales are valid, written
fast enough for a 61 GiB Scout inside a nine-minute GPU check.

    python benchmarks/gpu/synth.py OUT.gguf --model llama4-scout --quant Q2_K [--tiny]

How it is fast: each ggml type gets one pool of random blocks (32 MiB, numpy), with every
block's fp16 scale fields overwritten by small finite values; a tensor's data is that pool
repeated from a random block-aligned start, written with os.pwrite by several threads at
once (pwrite releases the GIL, and the kernel's page cache absorbs the writes while the
disk catches up). No fsync: a lost file is written again. Norm weights and rope_freqs are
ones; other F32 tensors (the MoE router) small random floats.

The quantization mixes: Q4_K_M is writer.py's (llama.cpp's own mix); Q3_K_M and Q2_K are
close to llama.cpp's (default type Q3_K / Q2_K, attn_v and ffn_down one or two steps up,
output Q6_K) but not claimed identical. The planner reads each tensor's real type from the
header, so plan-vs-measurement comparisons stay exact whatever the mix.

The vocabulary: the 256 byte-level BPE characters, then placeholders up to the real vocab
size (128256 / 202048), with the real BOS/EOS ids: any text tokenizes (byte by byte), and
benchmarks use random token ids anyway.

`--tiny` writes the same architecture at toy width (hidden 256, 4 layers, 4 experts) for
the dry run on a CPU."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tests.synthetic import writer  # noqa: E402
from tests.synthetic.tiny import _byte_chars  # noqa: E402

F32, F16, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 0, 1, 8, 10, 11, 12, 13, 14
FTYPE = {"Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10}
QUANTS = ("Q4_K_M", "Q3_K_M", "Q2_K")          # largest first
POOL_BYTES = 32 << 20
CHUNK_BYTES = 64 << 20

# (offset of each fp16 scale field in a block, (low, high) of its random value): chosen so
# that the dequantized weights are of order 0.02, as a trained model's are.
_SCALES = {
    Q2_K: [(80, (1e-3, 2e-3)), (82, (1e-3, 2e-3))],
    Q3_K: [(108, (3e-4, 6e-4))],
    Q4_K: [(0, (8e-5, 1.2e-4)), (2, (6e-4, 9e-4))],
    Q5_K: [(0, (3e-5, 5e-5)), (2, (5e-4, 8e-4))],
    Q6_K: [(208, (2e-5, 4e-5))],
    Q8_0: [(0, (2e-4, 4e-4))],
}


def spec_for(key: str, *, tiny: bool = False) -> writer.ModelSpec:
    """The real model's spec (one file, no split); `tiny`: the same architecture and
    vocabulary at toy width, whose rows stay multiples of 256 (K-quant blocks)."""
    spec = dataclasses.replace(writer.SPECS[key], split=1)
    if tiny:
        small = dict(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=512, context_length=4096)
        if spec.arch == "llama4":
            small.update(head_dim=64, n_expert=4, n_ff_exp=256)
        spec = dataclasses.replace(spec, **small, name=spec.name + " (tiny)")
    return spec


def inventory(spec: writer.ModelSpec, quant: str) -> list[tuple[str, tuple[int, ...], int]]:
    """writer.py's Q4_K_M inventory, retyped for `quant`."""
    inv = writer.tensor_inventory(spec)
    if quant == "Q4_K_M":
        return inv
    if quant not in FTYPE:
        raise ValueError(f"unknown quant {quant!r}; known: {', '.join(QUANTS)}")
    n = spec.n_layer
    out = []
    for name, shape, t in inv:
        if t == F32 or name == "output.weight" or (spec.tied and name == "token_embd.weight"):
            out.append((name, shape, t))
            continue
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        if quant == "Q3_K_M":
            if ".attn_v." in name:
                t = Q5_K if layer < 2 else Q4_K
            elif ".ffn_down" in name:
                t = Q5_K if layer < max(1, n // 16) else Q4_K
            elif ".attn_output." in name:
                t = Q4_K
            else:
                t = Q3_K
        else:  # Q2_K
            if ".attn_v." in name:
                t = Q4_K
            elif ".ffn_down" in name or ".attn_output." in name:
                t = Q3_K
            else:
                t = Q2_K
        out.append((name, shape, t))
    return out


def metadata(spec: writer.ModelSpec, quant: str) -> list[tuple[str, str, object]]:
    """writer.py's metadata with this quant's file type and a byte-level vocabulary."""
    kvs = []
    for key, kind, value in writer.metadata(spec, tokenizer=False):
        if key == "general.file_type":
            value = FTYPE[quant]
        kvs.append((key, kind, value))
        if key == "tokenizer.ggml.pre":
            kvs += [("tokenizer.ggml.tokens", "arr_str", _Vocab(spec.vocab)),
                    ("tokenizer.ggml.token_type", "arr_i32", spec.vocab),
                    ("tokenizer.ggml.merges", "arr_str", ["Ġ t", "h e", "Ġt he"])]
    return kvs


class _Vocab:
    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        chars = _byte_chars()
        yield from chars
        yield from (f"<t{i}>" for i in range(len(chars), self.n))


def file_bytes(spec: writer.ModelSpec, quant: str) -> int:
    """The tensor data's size (the file is this plus a header of a few MB)."""
    return sum(writer.nbytes(s, t) for _, s, t in inventory(spec, quant))


def _pool(ggml_type: int, rng, kind: str = "random", limit: int = POOL_BYTES):
    """bytes of random valid blocks of `ggml_type` (about min(limit, POOL_BYTES) of them),
    doubled (a slice may wrap around)."""
    import numpy as np

    block, size = writer._TYPE_SIZES[ggml_type]
    pool_bytes = max(size, min(limit, POOL_BYTES) // size * size)
    if ggml_type == F32:
        n = pool_bytes // 4
        a = (np.ones(n, dtype=np.float32) if kind == "ones"
             else (rng.standard_normal(n, dtype=np.float32) * 0.02))
        raw = a.tobytes()
    elif ggml_type == F16:
        raw = (rng.standard_normal(pool_bytes // 2, dtype=np.float32) * 0.02).astype(np.float16).tobytes()
    else:
        nblocks = pool_bytes // size
        a = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
        for off, (lo, hi) in _SCALES[ggml_type]:
            d = rng.uniform(lo, hi, size=nblocks).astype(np.float16)
            a[:, off:off + 2] = d.view(np.uint8).reshape(nblocks, 2)
        raw = a.tobytes()
    return raw + raw, len(raw), size


def write_model(path: Path, spec: writer.ModelSpec, quant: str, *, threads: int = 8,
                seed: int = 0) -> dict:
    """Write the GGUF at `path` (header by writer.py, then the data); return bytes, seconds
    and throughput."""
    import numpy as np

    t0 = time.monotonic()
    path = Path(path)
    tensors = inventory(spec, quant)
    kvs = metadata(spec, quant)
    tmp = path.with_name(path.name + ".partial")
    size = writer._write_part(tmp, kvs, tensors)          # header + a hole of the data's size
    align = 32
    offsets = []
    off = 0
    for name, shape, t in tensors:
        offsets.append(off)
        off += writer.nbytes(shape, t)
        off = (off + align - 1) // align * align
    data_start = size - off
    rng = np.random.default_rng(seed)

    def kind_of(name: str, t: int) -> str:
        ones = t == F32 and (name.endswith("norm.weight") or name.startswith("rope_freqs"))
        return "ones" if ones else "random"

    largest: dict[tuple[int, str], int] = {}
    for name, shape, t in tensors:
        k = (t, kind_of(name, t))
        largest[k] = max(largest.get(k, 0), writer.nbytes(shape, t))
    pools: dict[tuple[int, str], tuple[bytes, int, int]] = {}
    jobs = []
    for (name, shape, t), o in zip(tensors, offsets):
        kind = kind_of(name, t)
        if (t, kind) not in pools:
            pools[(t, kind)] = _pool(t, rng, kind, largest[(t, kind)])
        doubled, plen, bsize = pools[(t, kind)]
        n = writer.nbytes(shape, t)
        start = int(rng.integers(0, plen // bsize)) * bsize
        pos = 0
        while pos < n:
            step = min(CHUNK_BYTES, n - pos, plen)
            jobs.append((data_start + o + pos, (t, kind), start, step))
            start = (start + step) % plen
            pos += step
    fd = os.open(tmp, os.O_WRONLY)
    written = [0]
    lock = threading.Lock()

    def put(job):
        where, key, start, step = job
        view = memoryview(pools[key][0])[start:start + step]
        done = 0
        while done < step:
            done += os.pwrite(fd, view[done:], where + done)
        with lock:
            written[0] += step

    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
            list(ex.map(put, jobs))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    secs = time.monotonic() - t0
    return {"path": str(path), "model": spec.key, "quant": quant, "bytes": size,
            "data_bytes": written[0], "seconds": round(secs, 3),
            "gb_per_s": round(size / secs / 1e9, 3) if secs > 0 else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="llama3.2-1b", choices=sorted(writer.SPECS))
    ap.add_argument("--quant", default="Q4_K_M", choices=QUANTS)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args(argv)
    r = write_model(a.out, spec_for(a.model, tiny=a.tiny), a.quant, threads=a.threads)
    print(f"{r['path']}: {r['bytes'] / 2**30:.2f} GiB in {r['seconds']:.1f} s ({r['gb_per_s']} GB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
