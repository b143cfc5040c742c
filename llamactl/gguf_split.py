"""Split a GGUF file into parts that llama.cpp loads from the first one.

The Hugging Face Hub refuses files over 50 GB, so large quantized models (Llama 4 Scout at
Q8_0, Maverick at anything) are published as `NAME-00001-of-0000N.gguf`, `...-00002-...`
parts. llama.cpp's layout (its gguf-split tool): the first part holds every metadata key
and its share of the tensors; every part carries `split.no` (u16, 0-based),
`split.count` (u16) and `split.tensors.count` (i32, the tensors of all parts); each part
is a complete GGUF file whose tensor offsets are relative to its own data section.
llama.cpp, given the first part, derives the others' names from the `-00001-of-0000N`
suffix.

The parts are written into a temporary folder beside the target and moved into place at
the end, the first part last, so a failure or Ctrl-C never leaves a loadable first part
of an incomplete set."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

from llamactl import load
from llamactl.errors import IntegrityError, NotFound, UsageError

# The one pattern of llama.cpp's split names: STEM-00001-of-00003.gguf (STEM may hold a
# folder: "dir/model-00002-of-00003.gguf" gives the stem "dir/model").
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
HUB_FILE_LIMIT = 50 * 10**9
COPY_CHUNK = 16 * 2**20


def parse_size(text: str | int) -> int:
    """--split-max-size: a positive size, read as every size option is (llamactl.load:
    '48G' and '48GB' are decimal, as the Hub's 50 GB limit counts; '40GiB' binary)."""
    value = load.parse_size(text, "--split-max-size")
    if value <= 0:
        raise UsageError(f"a split size must be positive, not {text!r}")
    return value


class SplitName(NamedTuple):
    stem: str      # the name without -0000K-of-0000N.gguf
    no: int        # 1-based part number
    count: int
    ext: str = ".gguf"


def parse_split_name(name: str) -> SplitName | None:
    """SplitName for a split part's file name (or path text), None for any other name."""
    m = SPLIT_RE.match(name)
    if not m:
        return None
    return SplitName(m.group("stem"), int(m.group("no")), int(m.group("count")), m.group("ext"))


def part_name(stem: str, no: int, count: int, ext: str = ".gguf") -> str:
    """llama.cpp's name of part `no` (1-based) of `count`."""
    return f"{stem}-{no:05d}-of-{count:05d}{ext}"


def split_parts(path: Path) -> list[Path]:
    """Every part of a split GGUF (from its file name), or [path] for a single file."""
    path = Path(path)
    split = parse_split_name(path.name)
    if split is None:
        return [path]
    return [path.with_name(part_name(split.stem, i, split.count, split.ext))
            for i in range(1, split.count + 1)]


def unsplit_stem(name: str) -> str:
    """A file name's stem without a split suffix: 'm-00001-of-00002.gguf' and 'm.gguf' -> 'm'."""
    split = parse_split_name(name)
    if split is not None:
        return split.stem
    return name[:-5] if name.lower().endswith(".gguf") else name


def part_paths(out: Path, count: int) -> list[Path]:
    """`model.gguf` -> [`model-00001-of-0000N.gguf`, ...] (llama.cpp's naming)."""
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".gguf") else out.name
    return [out.with_name(part_name(stem, i, count)) for i in range(1, count + 1)]


def _copy_fields(reader, writer) -> None:
    import gguf

    skip_prefix = ("GGUF.", "split.")
    for name, field in reader.fields.items():
        if name.startswith(skip_prefix) or name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        # the stored type (and element type of arrays) is kept: u32 stays u32
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)


def split_gguf(src: Path, out: Path, max_size: int | str,
               progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
    """Write `src` (one GGUF file) as parts of at most `max_size` bytes each, named after
    `out`. Returns the parts, first first. When everything fits in one part, writes one
    plain file at `out` (no split keys) and returns [out]. A tensor larger than the limit
    gets a part of its own (it cannot be cut)."""
    import gguf

    from llamactl.fsutil import check_free_space

    src, out = Path(src), Path(out)
    limit = parse_size(max_size)
    if not src.is_file():
        raise NotFound(f"GGUF file not found: {src}")
    if parse_split_name(src.name) is not None:
        raise UsageError(f"{src.name} is already a split part", hint="split a single-file GGUF")
    if out.is_dir():
        raise UsageError(f"output path is a folder: {out}", hint="pass a file name ending in .gguf")
    try:
        reader = gguf.GGUFReader(str(src))
    except (ValueError, OSError) as exc:
        raise IntegrityError(f"{src.name} is not a readable GGUF file: {exc}") from exc
    if "split.count" in reader.fields:
        raise UsageError(f"{src.name} is already a split part", hint="split a single-file GGUF")
    tensors = list(reader.tensors)
    # what a part holds besides tensor data: the first part's metadata (the source's
    # header, generously) and the alignment padding of each tensor
    overhead = int(tensors[0].data_offset if tensors else reader.data_offset) + 32 * (len(tensors) + 1)
    budget = limit - overhead
    if budget <= 0:
        raise UsageError(f"a split size of {limit} bytes cannot even hold the metadata ({overhead} bytes)",
                         hint="use a larger --split-max-size, e.g. 48G for the Hugging Face Hub")
    total = sum(int(t.n_bytes) for t in tensors)
    check_free_space(out.parent if out.parent.exists() else Path.cwd(), total + overhead,
                     f"the split parts of {out.name}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.split-", dir=out.parent))
    try:
        writer = gguf.GGUFWriter(str(tmp_dir / out.name), reader.fields["general.architecture"].contents(),
                                 split_max_size=budget)
        align = reader.alignment
        if align != gguf.GGUF_DEFAULT_ALIGNMENT:
            writer.data_alignment = align
        _copy_fields(reader, writer)
        for t in tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order
            writer.add_tensor_info(t.name, shape, _dummy_dtype(),
                                   int(t.n_bytes), raw_dtype=t.tensor_type)
        n_parts = len(writer.tensors)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # tensor data copied with plain reads in chunks (not through the reader's memory map,
        # which would count the whole file in this process's resident memory)
        by_name = {t.name: t for t in tensors}
        done = 0
        with open(src, "rb") as fh:
            for fout, part in zip(writer.fout, writer.tensors):
                for name in list(part):
                    t = by_name[name]
                    n = int(t.n_bytes)
                    writer.write_padding(fout, fout.tell())
                    fh.seek(int(t.data_offset))
                    left = n
                    while left:
                        chunk = fh.read(min(COPY_CHUNK, left))
                        if not chunk:
                            raise IntegrityError(f"{src.name} is truncated inside tensor {name}")
                        fout.write(chunk)
                        left -= len(chunk)
                    writer.write_padding(fout, n)
                    del part[name]
                    done += n
                    if progress is not None:
                        progress(name, done, total)
        writer.close()
        written = sorted(tmp_dir.iterdir())
        targets = [out] if n_parts == 1 else part_paths(out, n_parts)
        expected = [tmp_dir / p.name for p in targets]
        if sorted(expected) != written:
            raise IntegrityError(f"split wrote {[p.name for p in written]}, expected {[p.name for p in expected]}")
        for part in expected:
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
        # the first part last: a set is loadable only once complete
        for tmp_part, target in list(zip(expected, targets))[1:] + [(expected[0], targets[0])]:
            os.replace(tmp_part, target)
        return targets
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _dummy_dtype():
    """Any numpy dtype other than uint8: with `raw_dtype` given, GGUFWriter then takes the
    shape as element counts (uint8 would mean a byte shape)."""
    import numpy as np

    return np.dtype(np.float32)


def split_in_place(path: Path, max_size: int | str,
                   progress: Callable[[str, int, int], None] | None = None) -> list[Path]:
    """Split the finished single file `path` into `-0000N-of-0000M` parts beside it and
    delete the single file (kept when everything fits in one part). Returns the parts."""
    path = Path(path)
    limit = parse_size(max_size)
    if path.stat().st_size <= limit:
        return [path]
    parts = split_gguf(path, path, limit, progress)
    if parts != [path]:
        path.unlink()
    return parts
