"""Load a GGUF in llama.cpp (through llamactl.overrides.load_llama), generate a few tokens,
and report what llama.cpp said about memory, as one JSON document on stdout.

    python -m tests.synthetic.llama_probe MODEL [--ctx N] [--ngl N] [--flash-attn]
        [--kv-type f16|q8_0|q4_0] [--chunked] [--ubatch N] [--pattern REGEX ...] [--tokens N] [--log FILE]

Run it in its own process: it installs a llama.cpp log callback that captures every line
(debug included), which is how tests see "tensor ... buffer type overridden to CPU" and the
KV cache and buffer sizes llama.cpp allocates. Used by tests/test_offload_llama.py,
tests/test_overrides.py and benchmarks/gpu/check.py."""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
from typing import Any


def run_probe(model, *args: str) -> dict:
    """Run this probe on `model` in a fresh interpreter; return its JSON report."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.synthetic.llama_probe", str(model), *args],
                          capture_output=True, text=True, timeout=240, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

MIB = 1024 * 1024
KV_LINE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers")
BUF_LINE = re.compile(r"(\S+) (model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
OVERRIDE_LINE = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")


def parse_log(text: str) -> dict[str, Any]:
    kv = [{"mib": float(m.group(1)), "cells": int(m.group(2)), "layers": int(m.group(3))}
          for m in KV_LINE.finditer(text)]
    buffers: dict[str, dict[str, float]] = {}
    for m in BUF_LINE.finditer(text):
        dev, kind, mib = m.group(1), m.group(2), float(m.group(3))
        buffers.setdefault(kind, {})
        buffers[kind][dev] = buffers[kind].get(dev, 0.0) + mib
    overrides = {m.group(1): m.group(2) for m in OVERRIDE_LINE.finditer(text)}
    return {"kv_caches": kv, "kv_mib": sum(k["mib"] for k in kv), "buffers": buffers,
            "overridden": overrides}


def _smi_used_mib() -> float | None:
    """GPU memory (MiB) nvidia-smi attributes to this process, while the model is loaded."""
    import os
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0.0
    found = False
    for line in out.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) == 2 and cols[0] == str(os.getpid()):
            try:
                total += float(cols[1])
            except ValueError:  # "[N/A]" where the driver does not account per process
                continue
            found = True
    return total if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--kv-type", default="f16")
    ap.add_argument("--chunked", action="store_true",
                    help="Llama 4: llama.cpp's chunked KV cache (swa_full off) instead of the full one")
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--pattern", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--log", default=None)
    ap.add_argument("--nvidia-smi", action="store_true",
                    help="also report the GPU memory nvidia-smi sees this process use")
    args = ap.parse_args(argv)

    import llama_cpp

    from llamactl.load import KV_TYPES
    from llamactl.overrides import load_llama

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def _capture(level: int, text: bytes, user_data: Any) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))
    kwargs: dict[str, Any] = dict(n_ctx=args.ctx, n_gpu_layers=args.ngl, flash_attn=args.flash_attn,
                                  verbose=True, seed=1)
    if args.kv_type != "f16":
        kwargs["type_k"] = kwargs["type_v"] = KV_TYPES[args.kv_type].ggml_type
    kwargs["swa_full"] = not args.chunked
    kwargs["n_ubatch"] = args.ubatch
    llm = load_llama(args.model, args.pattern, **kwargs)
    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))  # in case loading replaced it
    out = llm("the", max_tokens=args.tokens, temperature=0.0)
    choice = out["choices"][0]
    text = "".join(lines)
    if args.log:
        with open(args.log, "w") as fh:
            fh.write(text)
    doc = parse_log(text)
    doc.update({"text": choice["text"], "completion_tokens": out["usage"]["completion_tokens"],
                "class": type(llm).__name__, "n_ctx": llm.n_ctx()})
    if args.nvidia_smi:
        doc["nvidia_smi_used_mib"] = _smi_used_mib()
    sys.stdout.write(json.dumps(doc) + "\n")
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
