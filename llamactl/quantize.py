"""GGUF -> quantized GGUF through the installed llama.cpp (`llama_model_quantize`).

Checks come first, before any work: the type is known, the low-bit IQ types have an
importance matrix, an already-quantized source needs `allow_requantize`, the disk has room.
The output is written by llama.cpp to a temporary file beside the target and renamed on
success; a failure or Ctrl-C deletes it, and the temporary files of runs killed outright
(SIGKILL) are deleted by the next run in that folder (fsutil.remove_stale_partials). Split inputs (`-00001-of-0000N.gguf`) are read
through their first part; the output is one file."""

from __future__ import annotations

import ctypes
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from llamactl.errors import LlamactlError, NotFound, UsageError

# name -> (llama_ftype, nominal bits per weight of the main type, description)
QUANT_TYPES: dict[str, tuple[int, float, str]] = {
    "F32": (0, 32.0, "32-bit float, no quantization"),
    "F16": (1, 16.0, "16-bit float"),
    "BF16": (32, 16.0, "bfloat16"),
    "Q8_0": (7, 8.5, "8-bit, nearly lossless"),
    "Q6_K": (18, 6.5625, "6-bit K-quant"),
    "Q5_K_M": (17, 5.5, "5-bit K-quant mix (medium)"),
    "Q5_K_S": (16, 5.5, "5-bit K-quant (small)"),
    "Q5_0": (8, 5.5, "5-bit legacy"),
    "Q5_1": (9, 6.0, "5-bit legacy with offsets"),
    "Q4_K_M": (15, 4.5, "4-bit K-quant mix (medium): the usual choice"),
    "Q4_K_S": (14, 4.5, "4-bit K-quant (small)"),
    "Q4_0": (2, 4.5, "4-bit legacy"),
    "Q4_1": (3, 5.0, "4-bit legacy with offsets"),
    "IQ4_XS": (30, 4.25, "4-bit non-linear, 4.25 bpw"),
    "IQ4_NL": (25, 4.5, "4-bit non-linear, 4.5 bpw"),
    "Q3_K_L": (13, 3.4375, "3-bit K-quant mix (large)"),
    "Q3_K_M": (12, 3.4375, "3-bit K-quant mix (medium)"),
    "Q3_K_S": (11, 3.4375, "3-bit K-quant (small)"),
    "IQ3_M": (27, 3.4375, "3-bit non-linear mix"),
    "IQ3_S": (26, 3.4375, "3-bit non-linear, 3.44 bpw"),
    "IQ3_XS": (22, 3.3, "3-bit non-linear, 3.3 bpw (needs an imatrix)"),
    "IQ3_XXS": (23, 3.0625, "3-bit non-linear, 3.06 bpw (needs an imatrix)"),
    "Q2_K": (10, 2.625, "2-bit K-quant mix"),
    "Q2_K_S": (21, 2.625, "2-bit K-quant (small; needs an imatrix)"),
    "IQ2_M": (29, 2.5625, "2-bit non-linear mix (needs an imatrix)"),
    "IQ2_S": (28, 2.5625, "2-bit non-linear, 2.5 bpw (needs an imatrix)"),
    "IQ2_XS": (20, 2.3125, "2-bit non-linear, 2.31 bpw (needs an imatrix)"),
    "IQ2_XXS": (19, 2.0625, "2-bit non-linear, 2.06 bpw (needs an imatrix)"),
    "IQ1_M": (31, 1.75, "1-bit non-linear, 1.75 bpw (needs an imatrix)"),
    "IQ1_S": (24, 1.5625, "1-bit non-linear, 1.56 bpw (needs an imatrix)"),
}
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
FLOAT_TYPES = {"F32", "F16", "BF16"}
Progress = Callable[[str, int, int], None]


@dataclass
class QuantizeResult:
    path: Path | None            # None for a dry run
    qtype: str
    source: Path
    source_bytes: int
    bytes: int                   # written (or, for a dry run, llama.cpp's estimate)
    n_params: int
    bits_per_weight: float       # over all tensor bytes of the output
    seconds: float
    requantized: bool
    imatrix: str | None
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        d["source"] = str(self.source)
        return d


def normalize_type(qtype: str) -> str:
    """Case-insensitive type name -> canonical name; UsageError (exit 2) if unknown."""
    name = qtype.strip().upper().replace("-", "_")
    name = ALIASES.get(name, name)
    if name not in QUANT_TYPES:
        raise UsageError(f"unknown quantization type {qtype!r}",
                         hint="choose one of: " + ", ".join(QUANT_TYPES))
    return name


def check_type(qtype: str, imatrix: Path | None = None) -> str:
    """The canonical type name, after the checks that need no model: a known type
    (UsageError, exit 2), an importance matrix for the types llama.cpp refuses without one
    (exit 2), and that matrix's file existing (NotFound, exit 4)."""
    name = normalize_type(qtype)
    if name in NEEDS_IMATRIX and imatrix is None:
        raise UsageError(f"{name} needs an importance matrix: llama.cpp refuses it without one",
                         hint="pass --imatrix FILE (the imatrix published beside the GGUF quants), "
                              "or choose Q4_K_M / IQ4_XS")
    if imatrix is not None and not Path(imatrix).is_file():
        raise NotFound(f"imatrix file not found: {imatrix}")
    return name


def default_output(src: Path, qtype: str) -> Path:
    """model-f16.gguf + Q4_K_M -> model-Q4_K_M.gguf (a float-type suffix is replaced);
    split inputs drop the -00001-of-0000N part."""
    from llamactl.gguf_split import parse_split_name

    split = parse_split_name(src.name)
    stem = split.stem if split else src.stem
    stem = re.sub(r"[-.](f32|f16|bf16|F32|F16|BF16)$", "", stem)
    return src.with_name(f"{stem}-{qtype}.gguf")


# ----------------------------------------------------------------------- quantizing

def _failure(log: str) -> str | None:
    for line in log.splitlines():
        m = re.search(r"failed to quantize: (.*)", line)
        if m:
            return m.group(1).strip()
    return None


def _child_main() -> None:
    """Runs in a child process: one llama_model_quantize call described by argv[1] (JSON);
    prints {"rc", "log"} as JSON. llama.cpp's log is captured, never printed."""
    import json
    import sys

    import llama_cpp

    req = json.loads(sys.argv[1])
    if sys.platform.startswith("linux"):
        # Die with the parent: a parent killed outright must not leave this process writing
        # into a temporary file that the next run takes for stale.
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        if os.getppid() != req.get("parent"):
            sys.exit(1)   # the parent was already gone
    lines: list[str] = []

    tensor_line = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:  # pragma: no cover - C calls it
        if text:
            line = text.decode("utf-8", "replace")
            lines.append(line)
            m = tensor_line.match(line)
            if m:   # "[  12/ 724] blk.0.attn_k.weight - ...": one tensor started
                sys.stdout.write(json.dumps({"progress": [int(m.group(1)), int(m.group(2)), m.group(3)]}) + "\n")
                sys.stdout.flush()

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = req["ftype"]
    params.nthread = req["nthread"]
    params.allow_requantize = req["allow_requantize"]
    params.quantize_output_tensor = req["quantize_output_tensor"]
    params.pure = req["pure"]
    params.keep_split = False
    params.dry_run = req["dry_run"]
    keep: list[Any] = []
    if req.get("imatrix"):
        from llamactl.imatrix import imatrix_array, load_imatrix

        arr, keep = imatrix_array(load_imatrix(Path(req["imatrix"])))
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(req["src"].encode(), req["out"].encode(), ctypes.byref(params))
    del keep
    sys.stdout.write(json.dumps({"rc": int(rc), "log": "".join(lines)}) + "\n")
    sys.stdout.flush()


def _run_child(req: dict[str, Any], progress: Progress | None = None) -> tuple[int, str]:
    """Quantize in a child process, so that Ctrl-C can stop llama.cpp at once (a C call in
    this process cannot be interrupted, and would go on writing after we cleaned up).
    The child reports each tensor it starts; `progress(name, index, count)` sees them.
    Returns (rc, llama.cpp's log)."""
    import json
    import queue
    import signal
    import subprocess
    import sys
    import tempfile
    import threading

    pkg_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryFile() as err_file:
        # Ctrl-C must not land between starting the child and being ready to kill it: hold
        # SIGINT back until then (the child inherits the block; it is killed, not asked).
        old_mask = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from llamactl.quantize import _child_main; _child_main()",
                 json.dumps(req)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_file, env=env,
            )
        except BaseException:
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            raise
        lines: queue.Queue[bytes | None] = queue.Queue()
        final: dict[str, Any] | None = None
        try:
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

            def reader() -> None:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    lines.put(raw)
                lines.put(None)

            threading.Thread(target=reader, name="llamactl-quantize-reader", daemon=True).start()
            while True:
                try:
                    raw = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if raw is None:
                    break
                try:
                    doc = json.loads(raw.decode("utf-8", "replace"))
                except ValueError:
                    continue
                if "progress" in doc:
                    if progress is not None:
                        index, count, name = doc["progress"]
                        progress(str(name), int(index), int(count))
                elif "rc" in doc:
                    final = doc
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if final is not None:
            return int(final["rc"]), str(final.get("log", ""))
        err_file.seek(0)
        tail = err_file.read().decode("utf-8", "replace").strip().splitlines()[-1:]
        return -1, ("failed to quantize: the quantizer process ended abnormally "
                    f"({tail[0] if tail else f'exit status {proc.returncode}'})")


def quantize_gguf(src: Path, out: Path | None, qtype: str, *, imatrix: Path | None = None,
                  allow_requantize: bool = False, threads: int | None = None,
                  leave_output_tensor: bool = False, pure: bool = False,
                  dry_run: bool = False, progress: Progress | None = None) -> QuantizeResult:
    """Quantize `src` (a GGUF; for a split model its first part) to `qtype` at `out`
    (default: beside `src`, named for the type). `dry_run` writes nothing and returns
    llama.cpp's size estimate in `bytes`. `progress(tensor_name, index, count)` is called
    as llama.cpp starts each tensor."""
    from llamactl.fsutil import atomic_path, check_free_space, remove_stale_partials
    from llamactl.gguf_info import read_gguf

    name = check_type(qtype, imatrix)
    ftype, bpw, _ = QUANT_TYPES[name]
    src = Path(src)
    info = read_gguf(src)          # NotFound / IntegrityError for missing or corrupt input
    quantized = sorted({t.type_name for t in info.tensors
                        if len(t.shape) >= 2 and t.type_name not in FLOAT_TYPES})
    if quantized and not allow_requantize:
        raise LlamactlError(
            f"{src.name} is already quantized ({', '.join(quantized)}); requantizing stacks a second "
            "rounding error on the first and loses more quality than quantizing from F16/BF16",
            hint="quantize the full-precision GGUF instead, or pass --allow-requantize to do it anyway")
    if imatrix is not None:
        from llamactl.imatrix import load_imatrix

        load_imatrix(imatrix)      # a missing or unreadable file fails here, before any work
    out = Path(out) if out is not None else default_output(src, name)
    if not dry_run:
        if out.resolve() in {p.resolve() for p in info.paths}:
            raise UsageError("the output would overwrite the input", hint="choose another -o OUT.gguf")
        if out.exists() and out.is_dir():
            raise UsageError(f"output path is a folder: {out}", hint="pass a file name ending in .gguf")
        estimate = int(info.n_params * bpw / 8 * 1.15) + 16 * 1024 * 1024
        check_free_space(out.parent if out.parent.exists() else Path.cwd(), min(estimate, info.tensor_bytes * 2),
                         f"the quantized model {out.name}")

    request = {
        "parent": os.getpid(), "src": str(info.paths[0]), "ftype": ftype, "nthread": int(threads or 0),
        "allow_requantize": bool(allow_requantize), "quantize_output_tensor": not leave_output_tensor,
        "pure": bool(pure), "dry_run": bool(dry_run),
        "imatrix": str(Path(imatrix).resolve()) if imatrix is not None else None,
    }
    start = time.monotonic()
    log = ""

    def run(target: Path) -> None:
        nonlocal log
        rc, log = _run_child({**request, "out": str(target)}, None if dry_run else progress)
        if rc != 0:
            reason = _failure(log) or "llama.cpp could not quantize this model"
            raise LlamactlError(f"quantizing {src.name} to {name} failed: {reason}")

    if dry_run:
        run(out.with_name(f".{out.name}.dry-run"))
        m = re.findall(r"quant size\s*=\s*([\d.]+) MiB", log)
        size = int(float(m[-1]) * 1024 * 1024) if m else 0
        return QuantizeResult(None, name, src, sum(p.stat().st_size for p in info.paths), size,
                              info.n_params, size * 8 / max(1, info.n_params), time.monotonic() - start,
                              bool(quantized), str(imatrix) if imatrix else None, dry_run=True)

    remove_stale_partials(out.parent)   # what runs killed outright left here
    with atomic_path(out) as tmp:
        run(tmp)
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise LlamactlError(f"quantizing {src.name} produced no output")
    result_info = read_gguf(out)
    return QuantizeResult(
        path=out,
        qtype=name,
        source=src,
        source_bytes=sum(p.stat().st_size for p in info.paths),
        bytes=out.stat().st_size,
        n_params=result_info.n_params,
        bits_per_weight=result_info.tensor_bytes * 8 / max(1, result_info.n_params),
        seconds=time.monotonic() - start,
        requantized=bool(quantized),
        imatrix=str(imatrix) if imatrix else None,
    )
