"""Importance matrices for quantizing: reading llama.cpp's two formats, and handing the
values to `llama_model_quantize` as its NULL-terminated array. numpy, gguf and llama_cpp
are imported inside the functions."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Any

from llamactl.errors import IntegrityError, NotFound


def load_imatrix(path: Path) -> dict[str, list[float] | Any]:
    """Read an importance matrix: llama.cpp's GGUF format (`NAME.in_sum2` + `NAME.counts`
    tensors) or its legacy binary format (.dat). Returns tensor name -> float32 values
    (mean squared activations), the form llama_model_quantize takes."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"imatrix file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        import gguf

        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as exc:
            raise IntegrityError(f"{path.name} is not a readable imatrix GGUF: {exc}") from exc
        tensors = {t.name: t for t in reader.tensors}
        out: dict[str, Any] = {}
        for name, t in tensors.items():
            if not name.endswith(".in_sum2"):
                continue
            base = name[: -len(".in_sum2")]
            counts_t = tensors.get(base + ".counts")
            if counts_t is None:
                raise IntegrityError(f"{path.name}: {base} has sums but no counts")
            sums = np.asarray(t.data, dtype=np.float32).reshape(-1)
            counts = np.asarray(counts_t.data, dtype=np.float32).reshape(-1)
            ne0 = sums.size // max(1, counts.size)
            values = np.ones_like(sums)
            for j, c in enumerate(counts):
                if c > 0:
                    values[j * ne0:(j + 1) * ne0] = sums[j * ne0:(j + 1) * ne0] / c
            out[base] = values
        if not out:
            raise IntegrityError(f"{path.name} holds no importance-matrix entries")
        return out
    # legacy: int32 count, then per entry: int32 name length, name, int32 ncall, int32 nval, floats
    data = path.read_bytes()
    try:
        pos = 0
        (n,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if n <= 0 or n > 1_000_000:
            raise ValueError("bad entry count")
        out = {}
        for _ in range(n):
            (ln,) = struct.unpack_from("<i", data, pos)
            pos += 4
            name = data[pos:pos + ln].decode("utf-8")
            pos += ln
            ncall, nval = struct.unpack_from("<ii", data, pos)
            pos += 8
            if nval <= 0 or pos + 4 * nval > len(data):
                raise ValueError("truncated entry")
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
            pos += 4 * nval
            out[name] = values / ncall if ncall > 0 else values
        return out
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path.name} is not an imatrix file (GGUF or legacy .dat): {exc}",
                             hint="use the *.imatrix / imatrix.dat file published beside the GGUF quants") from exc


def imatrix_array(values: dict[str, Any]):
    """A NULL-terminated llama_model_imatrix_data array, and the objects it points into
    (keep them alive until quantizing ends)."""
    import llama_cpp
    import numpy as np

    keep: list[Any] = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    for i, (name, vals) in enumerate(values.items()):
        name_b = ctypes.create_string_buffer(name.encode())
        buf = np.ascontiguousarray(vals, dtype=np.float32)
        keep += [name_b, buf]
        arr[i].name = ctypes.cast(name_b, ctypes.c_char_p)
        arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = buf.size
    arr[len(values)].name = None
    keep.append(arr)
    return arr, keep
