"""Reading GGUF headers (metadata and tensor inventory) without loading weights.

A real model's header carries the tokenizer: 128k-200k token strings, as many scores and
token types, and 280k-440k merges. `gguf.GGUFReader` builds numpy views for every one of
them (12-20 s on a real header). This reader walks the header with `struct` over an mmap
and skips those arrays without materialising them, keeping only their lengths. No numpy,
no gguf package: it is imported by `show` and `plan` and must stay cheap.

Split models (`NAME-00001-of-00003.gguf`) are read part by part; each tensor records the
part it lives in and its offset inside that part's data section.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamactl.errors import IntegrityError, NotFound
from llamactl.gguf_split import split_parts

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml_type -> (name, elements per block, bytes per block). Values from ggml.h / ggml.c.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
GGML_TYPE_IDS: dict[str, int] = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}

# llama_ftype (general.file_type) -> the name users know.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}

# GGUF metadata value types: id -> (struct format, size) for fixed-size scalars.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING = 8
_ARRAY = 9

# Arrays that are never materialised (their lengths are kept), and a size above which any
# array is skipped.
SKIPPED_ARRAYS = frozenset({
    "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
})
MAX_LOADED_ARRAY = 4096

@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order (ne0 first)
    ggml_type: int
    type_name: str
    n_elements: int
    nbytes: int
    offset: int  # inside the data section of `file`
    file: Path

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "type": self.type_name,
                "n_elements": self.n_elements, "nbytes": self.nbytes, "offset": self.offset,
                "file": str(self.file)}


@dataclass
class GGUFInfo:
    paths: list[Path]
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    architecture: str
    name: str | None
    file_type: str | None
    n_params: int
    tensor_bytes: int
    context_length: int | None
    block_count: int | None
    expert_count: int | None
    expert_used_count: int | None
    has_chat_template: bool
    license: str | None
    vocab_size: int | None
    array_lengths: dict[str, int] = field(default_factory=dict)
    version: int = 3
    file_bytes: int = 0  # the parts' sizes on disk, together

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """metadata[f"{architecture}.{suffix}"], or `default`."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def tensor(self, name: str) -> TensorInfo | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "paths": [str(p) for p in self.paths],
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.file_type,
            "n_params": self.n_params,
            "tensor_bytes": self.tensor_bytes,
            "file_bytes": self.file_bytes,
            "n_tensors": len(self.tensors),
            "context_length": self.context_length,
            "block_count": self.block_count,
            "expert_count": self.expert_count,
            "expert_used_count": self.expert_used_count,
            "has_chat_template": self.has_chat_template,
            "license": self.license,
            "vocab_size": self.vocab_size,
            "gguf_version": self.version,
        }
        if tensors:
            doc["tensors"] = [t.to_dict() for t in self.tensors]
        return doc


def tensor_nbytes(ggml_type: int, n_elements: int, name: str = "?") -> int:
    try:
        _, block, size = GGML_TYPES[ggml_type]
    except KeyError:
        raise IntegrityError(f"tensor {name} has an unknown ggml type {ggml_type}",
                             hint="this GGUF may need a newer llamactl/llama.cpp") from None
    if n_elements % block:
        raise IntegrityError(f"tensor {name}: {n_elements} elements is not a multiple of "
                             f"the {GGML_TYPES[ggml_type][0]} block size {block}")
    return n_elements // block * size


class _Truncated(Exception):
    pass


class _Header:
    """Walks one GGUF header held in an mmap."""

    def __init__(self, buf: Any, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0

    def _need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated()

    def scalar(self, fmt: str, n: int) -> Any:
        self._need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self) -> int:
        return self.scalar("<I", 4)

    def u64(self) -> int:
        return self.scalar("<Q", 8)

    def string(self) -> str:
        n = self.u64()
        self._need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated()
            pos += 8 + unpack("<Q", buf, pos)[0]
        if pos > size:
            raise _Truncated()
        self.pos = pos

    def value(self, vtype: int, key: str, lengths: dict[str, int]) -> tuple[bool, Any]:
        """(kept, value): kept is False for an array that was skipped."""
        if vtype in _SCALARS:
            return True, self.scalar(*_SCALARS[vtype])
        if vtype == _STRING:
            return True, self.string()
        if vtype == _ARRAY:
            etype = self.u32()
            count = self.u64()
            lengths[key] = count
            skip = key in SKIPPED_ARRAYS or count > MAX_LOADED_ARRAY
            if skip:
                if etype in _SCALARS:
                    n = count * _SCALARS[etype][1]
                    self._need(n)
                    self.pos += n
                elif etype == _STRING:
                    self.skip_strings(count)
                else:
                    for _ in range(count):  # arrays of arrays: walk them
                        self.value(etype, key + "[]", {})
                return False, None
            if etype in _SCALARS:
                fmt, n = _SCALARS[etype]
                self._need(n * count)
                values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
                self.pos += n * count
                return True, values
            items = []
            for _ in range(count):
                items.append(self.value(etype, key + "[]", {})[1])
            return True, items
        raise ValueError(f"unknown GGUF value type {vtype} for key {key}")


def _read_part(path: Path) -> tuple[int, dict[str, Any], dict[str, int], list[TensorInfo], int]:
    """(version, metadata, array_lengths, tensors, file size) of one GGUF file."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except IsADirectoryError:
        raise NotFound(f"{path} is a folder, not a GGUF file") from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise IntegrityError(f"{path} is not a GGUF file (only {size} bytes)",
                                 hint="download or convert it again")
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise IntegrityError(f"{path} is not a GGUF file (magic {magic!r})",
                                 hint="llamactl reads GGUF models; convert safetensors with `llamactl convert`")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            hdr = _Header(mm, size)
            hdr.pos = 4
            try:
                version = hdr.u32()
                if version not in (2, 3):
                    raise IntegrityError(f"{path}: unsupported GGUF version {version}")
                n_tensors = hdr.u64()
                n_kv = hdr.u64()
                if n_tensors > 10_000_000 or n_kv > 10_000_000:
                    raise IntegrityError(f"{path} has a corrupt GGUF header "
                                         f"({n_tensors} tensors, {n_kv} keys)")
                metadata: dict[str, Any] = {}
                lengths: dict[str, int] = {}
                for _ in range(n_kv):
                    key = hdr.string()
                    vtype = hdr.u32()
                    try:
                        kept, value = hdr.value(vtype, key, lengths)
                    except ValueError as exc:
                        raise IntegrityError(f"{path} has a corrupt GGUF header: {exc}") from None
                    if kept:
                        metadata[key] = value
                raw_tensors = []
                for _ in range(n_tensors):
                    name = hdr.string()
                    n_dims = hdr.u32()
                    if n_dims > 8:
                        raise IntegrityError(f"{path} has a corrupt tensor entry {name!r} ({n_dims} dims)")
                    dims = tuple(hdr.u64() for _ in range(n_dims))
                    ttype = hdr.u32()
                    offset = hdr.u64()
                    raw_tensors.append((name, dims, ttype, offset))
            except _Truncated:
                raise IntegrityError(f"{path} is truncated (its GGUF header ends early)",
                                     hint="download or convert it again") from None
            header_end = hdr.pos
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = DEFAULT_ALIGNMENT
    data_start = (header_end + alignment - 1) // alignment * alignment
    tensors = []
    end = data_start
    for name, dims, ttype, offset in raw_tensors:
        n = 1
        for d in dims:
            n *= d
        nbytes = tensor_nbytes(ttype, n, name)
        tensors.append(TensorInfo(name=name, shape=dims, ggml_type=ttype,
                                  type_name=GGML_TYPES[ttype][0], n_elements=n,
                                  nbytes=nbytes, offset=offset, file=path))
        end = max(end, data_start + offset + nbytes)
    if end > size:
        raise IntegrityError(f"{path} is truncated: its tensors need {end} bytes, "
                             f"the file has {size}", hint="download or convert it again")
    return version, metadata, lengths, tensors, size


def read_gguf(path: Path | str) -> GGUFInfo:
    """Read a GGUF's metadata and tensor inventory. For a split model pass any part (the
    first is usual); every part is read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise NotFound(f"no such file: {path}")
    parts = split_parts(path)
    version, metadata, lengths, tensors, size = _read_part(parts[0])
    file_bytes = size
    declared = metadata.get("split.count")
    if isinstance(declared, int) and declared > 1 and declared != len(parts):
        raise IntegrityError(f"{parts[0]} says it is part of {declared} files, but its name "
                             f"says {len(parts)}",
                             hint="keep split files under the names they were published with")
    for part in parts[1:]:
        if not part.exists():
            raise NotFound(f"missing part of a split model: {part}",
                           hint="download every part of the model")
        _, _, _, more, size = _read_part(part)
        tensors.extend(more)
        file_bytes += size
    expected = metadata.get("split.tensors.count")
    if isinstance(expected, int) and len(parts) > 1 and expected != len(tensors):
        raise IntegrityError(f"split model {parts[0].name}: {len(tensors)} tensors found in its "
                             f"parts, {expected} declared")
    arch = str(metadata.get("general.architecture") or "unknown")

    def akey(suffix: str) -> Any:
        v = metadata.get(f"{arch}.{suffix}")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    ftype = metadata.get("general.file_type")
    vocab = akey("vocab_size")
    if vocab is None:
        vocab = lengths.get("tokenizer.ggml.tokens")
    lic = metadata.get("general.license")
    name = metadata.get("general.name")
    return GGUFInfo(
        paths=parts,
        metadata=metadata,
        tensors=tensors,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=FILE_TYPES.get(ftype, f"type {ftype}") if isinstance(ftype, int) else None,
        n_params=sum(t.n_elements for t in tensors),
        tensor_bytes=sum(t.nbytes for t in tensors),
        context_length=akey("context_length"),
        block_count=akey("block_count"),
        expert_count=akey("expert_count"),
        expert_used_count=akey("expert_used_count"),
        has_chat_template=any(k.startswith("tokenizer.chat_template") for k in metadata),
        license=lic if isinstance(lic, str) else None,
        vocab_size=vocab,
        array_lengths=lengths,
        version=version,
        file_bytes=file_bytes,
    )
