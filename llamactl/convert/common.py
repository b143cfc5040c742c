"""What every safetensors -> GGUF conversion needs, whatever the architecture.

- `Checkpoint`: config.json plus the safetensors shards, read without torch or the
  `safetensors` package (the format is an 8-byte little-endian header length, a JSON
  header, then raw data). Headers are checked against the files' sizes before anything is
  written; tensor data is memory-mapped one tensor at a time and unmapped after use, so
  peak memory stays near one tensor (in practice near one chunk of rows).
- Type conversion between F32/F16/BF16 (bf16 has no numpy dtype: it travels as uint16).
- `TensorJob` and `write_gguf`: the tensors of the output file, each written in chunks of
  rows through the `gguf` package's GGUFWriter, into a temporary file renamed on success.
- The tokenizer: a byte-level BPE tokenizer.json (tokens, token types, merges, BOS/EOS/EOT/
  EOM ids, add_bos) and the chat template (tokenizer_config.json or chat_template.jinja),
  written with a caller-chosen pre-tokenizer name (`llama-bpe` for Llama 3, `llama4` ...).
- General metadata (name, license, quantization version, file type).

Architecture modules (llama.py, llama4.py) build on these pieces."""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from llamactl.errors import IntegrityError, LlamactlError, NotFound

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Progress = Callable[[str, int, int], None]

OUTTYPES = ("f32", "f16", "bf16")
# safetensors dtype -> (bytes per element, name used here)
_ST_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
CHUNK_BYTES = 4 * 1024 * 1024  # rows are converted and written in chunks of about this size (as f32)


# ---------------------------------------------------------------------------- safetensors

@dataclass
class SourceTensor:
    name: str
    dtype: str                 # "F32" | "F16" | "BF16"
    shape: tuple[int, ...]     # numpy order (rows first), as stored
    file: Path
    offset: int                # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: Path) -> dict[str, SourceTensor]:
    """Parse one safetensors file's header and check that every tensor's data lies inside
    the file. Raises IntegrityError for a truncated or malformed file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise IntegrityError(f"{path.name} is truncated (no safetensors header)",
                                     hint="download the checkpoint again")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > 100 * 1024 * 1024 or 8 + n > size:
                raise IntegrityError(f"{path.name} is truncated or not a safetensors file "
                                     f"(header length {n}, file size {size})",
                                     hint="download the checkpoint again")
            raw = fh.read(n)
    except FileNotFoundError:
        raise IntegrityError(f"shard missing: {path}", hint="download the checkpoint again") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path.name} has a corrupt safetensors header: {exc}",
                             hint="download the checkpoint again") from exc
    if not isinstance(header, dict):
        raise IntegrityError(f"{path.name} has a corrupt safetensors header")
    data_start = 8 + n
    out: dict[str, SourceTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{path.name}: bad header entry for {name}") from exc
        if dtype not in _ST_DTYPES:
            raise LlamactlError(f"{path.name}: tensor {name} has dtype {dtype}; only F32, F16 and BF16 "
                                "checkpoints can be converted")
        nbytes = math.prod(shape) * _ST_DTYPES[dtype]
        if end - begin != nbytes or begin < 0:
            raise IntegrityError(f"{path.name}: tensor {name} has {end - begin} bytes for shape {list(shape)}")
        if data_start + end > size:
            raise IntegrityError(
                f"{path.name} is truncated: tensor {name} ends at byte {data_start + end}, "
                f"the file has {size}", hint="download the checkpoint again")
        out[name] = SourceTensor(name, dtype, shape, path, data_start + begin, nbytes)
    return out


@dataclass
class Checkpoint:
    """A Hugging Face checkpoint folder: config.json and the tensors of all its shards."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, SourceTensor]
    shards: list[Path]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    def source_dtype(self) -> str:
        """The dtype most of the weights are stored in ("F32", "F16" or "BF16")."""
        count: dict[str, int] = {}
        for t in self.tensors.values():
            count[t.dtype] = count.get(t.dtype, 0) + t.n_elements
        return max(count, key=count.__getitem__) if count else "F32"

    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors.values()), default=0)


def read_config(src_dir: Path) -> dict[str, Any]:
    src_dir = Path(src_dir)
    if not src_dir.exists():
        raise NotFound(f"checkpoint folder not found: {src_dir}")
    if not src_dir.is_dir():
        raise LlamactlError(f"not a checkpoint folder: {src_dir}",
                            hint="pass the folder that holds config.json and the *.safetensors files")
    cfg_path = src_dir / "config.json"
    if not cfg_path.is_file():
        raise LlamactlError(f"no config.json in {src_dir}: not a Hugging Face checkpoint",
                            hint="pass the folder that holds config.json and the *.safetensors files")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise IntegrityError(f"{cfg_path} is not a JSON object")
    return config


def open_checkpoint(src_dir: Path, config: dict[str, Any] | None = None) -> Checkpoint:
    """Read config.json and every shard's header (not the data). A shard named by
    model.safetensors.index.json that is missing or truncated raises IntegrityError."""
    src_dir = Path(src_dir)
    config = config if config is not None else read_config(src_dir)
    index = src_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{index.name} is not a valid safetensors index: {exc}") from exc
        shards = sorted({src_dir / f for f in weight_map.values()})
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise IntegrityError(f"shard missing from {src_dir}: {', '.join(missing)}",
                                 hint="download the checkpoint again (all model-*.safetensors files)")
    else:
        weight_map = None
        shards = sorted(src_dir.glob("*.safetensors"))
        if not shards:
            raise LlamactlError(f"no *.safetensors files in {src_dir}",
                                hint="only safetensors checkpoints can be converted "
                                     "(not PyTorch .bin or Meta's original/ consolidated files)")
    tensors: dict[str, SourceTensor] = {}
    for shard in shards:
        for name, t in read_safetensors_header(shard).items():
            if name in tensors:
                raise IntegrityError(f"tensor {name} is stored twice ({tensors[name].file.name}, {shard.name})")
            tensors[name] = t
    if weight_map is not None:
        absent = [n for n in weight_map if n not in tensors]
        if absent:
            raise IntegrityError(f"{len(absent)} tensor(s) listed in the index are not in the shards "
                                 f"(first: {absent[0]})", hint="download the checkpoint again")
    return Checkpoint(src_dir, config, tensors, shards)


# --------------------------------------------------------------------------- conversions

def to_float32(raw: "np.ndarray", dtype: str) -> "np.ndarray":
    """Rows as read from the file (uint16 for BF16) -> float32."""
    import numpy as np

    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def float32_to_bf16(x: "np.ndarray") -> "np.ndarray":
    """float32 -> bf16 bits (uint16), rounding to nearest even; NaN stays NaN."""
    import numpy as np

    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    t = u >> 16            # one temporary, updated in place: memory stays near one block
    t &= np.uint32(1)
    t += np.uint32(0x7FFF)
    t += u
    t >>= 16
    rounded = t.astype(np.uint16)
    del t
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = np.uint16(0x7FC0)
    return rounded


def convert_block(raw: "np.ndarray", src_dtype: str, ggml_type: str) -> "np.ndarray":
    """A block of source data -> the bytes of the output type (F32, F16 or BF16)."""
    import numpy as np

    if ggml_type == "BF16" and src_dtype == "BF16":
        return np.ascontiguousarray(raw)           # exact: the bits are copied
    if ggml_type == "F16" and src_dtype == "F16":
        return np.ascontiguousarray(raw)
    x = to_float32(raw, src_dtype)
    if ggml_type == "F32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if ggml_type == "F16":
        return x.astype(np.float16)
    if ggml_type == "BF16":
        return float32_to_bf16(x)
    raise ValueError(f"unsupported output type {ggml_type}")


def _np_dtype(src_dtype: str):
    import numpy as np

    return {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[src_dtype]


class MappedTensor:
    """A source tensor memory-mapped on its own (opened on enter, unmapped on exit)."""

    def __init__(self, t: SourceTensor):
        self.t = t
        self._mm: mmap.mmap | None = None
        self._fh = None

    def __enter__(self) -> "MappedTensor":
        import numpy as np

        gran = mmap.ALLOCATIONGRANULARITY
        start = (self.t.offset // gran) * gran
        self._delta = self.t.offset - start
        self._fh = open(self.t.file, "rb")
        length = self._delta + self.t.nbytes
        if self.t.nbytes == 0:
            self.array = np.zeros(self.t.shape, dtype=_np_dtype(self.t.dtype))
            return self
        self._mm = mmap.mmap(self._fh.fileno(), length, access=mmap.ACCESS_READ, offset=start)
        self.array = np.frombuffer(self._mm, dtype=_np_dtype(self.t.dtype), count=self.t.n_elements,
                                   offset=self._delta).reshape(self.t.shape)
        return self

    def release(self, first_byte: int, n_bytes: int) -> None:
        """Drop already-used pages from this process's resident set (Linux)."""
        if self._mm is None or not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        begin = ((self._delta + first_byte) // page) * page
        end = ((self._delta + first_byte + n_bytes) // page) * page
        if end > begin:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)
            except (OSError, ValueError):
                pass

    def __exit__(self, *exc: Any) -> None:
        self.array = None  # type: ignore[assignment]
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view is still alive somewhere: let the GC unmap it
                pass
            self._mm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ------------------------------------------------------------------------- output tensors

@dataclass
class TensorJob:
    """One output tensor: its GGUF name, numpy-order shape, GGML type name, and a function
    that yields its data as contiguous blocks of rows (already in the output type)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str                      # "F32" | "F16" | "BF16"
    blocks: Callable[[], Iterator["np.ndarray"]]
    source: str = ""

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.n_elements * {"F32": 4, "F16": 2, "BF16": 2}[self.ggml_type]


def source_job(t: SourceTensor, gguf_name: str, ggml_type: str,
               row_perm: "np.ndarray | None" = None) -> TensorJob:
    """A job that streams `t` in blocks of rows, optionally reordering rows (output row i
    is source row row_perm[i]), converting to `ggml_type`."""

    def blocks() -> Iterator["np.ndarray"]:
        with MappedTensor(t) as m:
            arr = m.array
            if arr.ndim == 1 or arr.shape[0] == 0:
                yield convert_block(arr, t.dtype, ggml_type)
                return
            row_elems = max(1, math.prod(arr.shape[1:]))
            rows = max(1, CHUNK_BYTES // (4 * row_elems))
            row_bytes = row_elems * _ST_DTYPES[t.dtype]
            for r0 in range(0, arr.shape[0], rows):
                r1 = min(arr.shape[0], r0 + rows)
                if row_perm is None:
                    block = arr[r0:r1]
                else:
                    block = arr[row_perm[r0:r1]]
                out = convert_block(block, t.dtype, ggml_type)
                del block
                yield out
                if row_perm is None:
                    m.release(r0 * row_bytes, (r1 - r0) * row_bytes)
            del arr

    return TensorJob(gguf_name, t.shape, ggml_type, blocks, source=t.name)


def array_job(gguf_name: str, array: "np.ndarray", ggml_type: str = "F32") -> TensorJob:
    """A job for a tensor computed in memory (small ones: rope_freqs ...)."""
    import numpy as np

    src = "F32"
    data = np.ascontiguousarray(array, dtype=np.float32)

    def blocks() -> Iterator["np.ndarray"]:
        yield convert_block(data, src, ggml_type)

    return TensorJob(gguf_name, tuple(data.shape), ggml_type, blocks, source="(computed)")


def ggml_type_for(outtype: str, ndim: int) -> str:
    """Norms and other 1-D tensors stay F32 (as llama.cpp expects); matrices take the
    output type."""
    if ndim <= 1:
        return "F32"
    return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[outtype]


def file_type_for(outtype: str) -> int:
    import gguf

    return {
        "f32": int(gguf.LlamaFileType.ALL_F32),
        "f16": int(gguf.LlamaFileType.MOSTLY_F16),
        "bf16": int(gguf.LlamaFileType.MOSTLY_BF16),
    }[outtype]


def default_outtype(ckpt: Checkpoint) -> str:
    """bf16 when the source is bf16; f16 for f16 and f32 sources (as llama.cpp's own
    converter does)."""
    return "bf16" if ckpt.source_dtype() == "BF16" else "f16"


def check_outtype(outtype: str | None, ckpt: Checkpoint) -> str:
    if outtype is None:
        return default_outtype(ckpt)
    value = outtype.lower()
    if value not in OUTTYPES:
        from llamactl.errors import UsageError

        raise UsageError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}",
                         hint="quantize afterwards with `llamactl quantize OUT.gguf Q4_K_M`")
    return value


def write_gguf(out_path: Path, arch: str, add_metadata: Callable[[Any], None], jobs: list[TensorJob],
               progress: Progress | None = None) -> int:
    """Write a GGUF file: metadata (through `add_metadata(writer)`), then every job's
    tensor, block by block. Atomic: a temporary file beside `out_path`, fsynced and renamed
    on success, deleted on any failure or Ctrl-C. Returns the bytes written."""
    import gguf
    import numpy as np

    from llamactl.fsutil import atomic_path, check_free_space

    out_path = Path(out_path)
    total = sum(j.nbytes for j in jobs)
    check_free_space(out_path.parent if out_path.parent.exists() else Path.cwd(), total + 64 * 1024 * 1024,
                     f"the converted model {out_path.name}")
    raw_types = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16,
                 "BF16": gguf.GGMLQuantizationType.BF16}
    np_types = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
    done = 0
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            add_metadata(writer)
            for job in jobs:
                writer.add_tensor_info(job.name, job.shape, np.dtype(np_types[job.ggml_type]), job.nbytes,
                                       raw_dtype=raw_types[job.ggml_type])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            fout = writer.fout[0]
            align = writer.data_alignment
            for job in jobs:
                writer.write_padding(fout, fout.tell(), align)
                written = 0
                for block in job.blocks():
                    expect = np_types[job.ggml_type]
                    if block.dtype != expect:
                        raise RuntimeError(f"{job.name}: block of {block.dtype}, expected {expect}")
                    fout.write(memoryview(np.ascontiguousarray(block)).cast("B"))
                    written += block.nbytes
                    del block
                if written != job.nbytes:
                    raise RuntimeError(f"{job.name}: wrote {written} bytes, expected {job.nbytes}")
                writer.write_padding(fout, written, align)
                done += written
                if progress is not None:
                    progress(job.name, done, total)
            fout.flush()
        finally:
            writer.close()
    return out_path.stat().st_size


# ---------------------------------------------------------------------------- tokenizer

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class BpeTokenizer:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None = None
    eom_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = True
    add_eos: bool = False
    chat_template: str | list[dict[str, str]] | None = None
    special: dict[str, int] = field(default_factory=dict)   # content -> id of special tokens


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path.name} is not valid JSON: {exc}") from exc


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("content")
    return None


def _post_processor_adds(post: Any, token: str) -> bool:
    """Whether a tokenizer.json post-processor puts `token` first in a single sequence."""
    if not isinstance(post, dict):
        return False
    if post.get("type") == "Sequence":
        return any(_post_processor_adds(p, token) for p in post.get("processors", []))
    if post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        if single and isinstance(single[0], dict) and "SpecialToken" in single[0]:
            return single[0]["SpecialToken"].get("id") == token
    return False


def read_chat_template(src_dir: Path, tok_config: dict[str, Any]) -> str | list[dict[str, str]] | None:
    """The chat template: chat_template.jinja wins over tokenizer_config.json's
    `chat_template` (as in transformers 5); chat_template.json is read as well."""
    jinja = src_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cjson = src_dir / "chat_template.json"
    if cjson.is_file():
        value = _read_json(cjson)
        if isinstance(value, dict) and "chat_template" in value:
            return value["chat_template"]
    return tok_config.get("chat_template")


def load_bpe_tokenizer(src_dir: Path, vocab_size: int, *, eot_token: str | None = "<|eot_id|>",
                       eom_token: str | None = "<|eom_id|>",
                       config: dict[str, Any] | None = None) -> BpeTokenizer:
    """Read a byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json). Tokens
    beyond the tokenizer's own up to `vocab_size` (the embedding rows) become unused
    padding tokens. Raises a LlamactlError when the tokenizer is missing or not BPE."""
    src_dir = Path(src_dir)
    tj_path = src_dir / "tokenizer.json"
    if not tj_path.is_file():
        hint = "download tokenizer.json and tokenizer_config.json with the weights"
        if (src_dir / "tokenizer.model").is_file():
            hint = "this checkpoint has only a SentencePiece tokenizer.model; Llama 3 needs tokenizer.json"
        raise LlamactlError(f"no tokenizer.json in {src_dir}: the tokenizer is missing", hint=hint)
    tj = _read_json(tj_path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise LlamactlError(f"{tj_path.name} is not a byte-level BPE tokenizer (type {model.get('type')!r})")
    tc_path = src_dir / "tokenizer_config.json"
    tok_config = _read_json(tc_path) if tc_path.is_file() else {}
    config = config or {}

    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: (int(a["id"]), bool(a.get("special"))) for a in tj.get("added_tokens", [])}
    for content, (tid, _) in added.items():
        vocab[content] = tid
    n_tok = max(vocab.values()) + 1 if vocab else 0
    if n_tok > vocab_size:
        raise LlamactlError(f"the tokenizer has {n_tok} tokens but the model's embedding has only "
                            f"{vocab_size} rows: tokenizer and weights do not belong together")
    tokens: list[str | None] = [None] * vocab_size
    for content, tid in vocab.items():
        tokens[tid] = content
    types = [TOKEN_NORMAL] * vocab_size
    special_ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = TOKEN_UNUSED
        elif t in added:
            is_special = added[t][1]
            types[i] = TOKEN_CONTROL if is_special else TOKEN_USER_DEFINED
            if is_special:
                special_ids[t] = i

    merges_raw = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges_raw]

    def tid_of(name: str) -> int | None:
        content = _token_content(tok_config.get(name))
        if content is not None and content in vocab:
            return vocab[content]
        return None

    def cfg_id(key: str) -> int | None:
        v = config.get(key)
        if isinstance(v, list):
            v = v[0] if v else None
        return int(v) if isinstance(v, int) else None

    bos_id = tid_of("bos_token")
    if bos_id is None:
        bos_id = cfg_id("bos_token_id")
    eos_id = tid_of("eos_token")
    if eos_id is None:
        eos_id = cfg_id("eos_token_id")
    pad_id = tid_of("pad_token")
    bos_content = tokens[bos_id] if bos_id is not None else None
    if "add_bos_token" in tok_config:
        add_bos = bool(tok_config["add_bos_token"])
    else:
        add_bos = bos_content is not None and _post_processor_adds(tj.get("post_processor"), bos_content)
    add_eos = bool(tok_config.get("add_eos_token", False))
    return BpeTokenizer(
        tokens=[str(t) for t in tokens],
        token_types=types,
        merges=merges,
        bos_id=bos_id,
        eos_id=eos_id,
        eot_id=vocab.get(eot_token) if eot_token else None,
        eom_id=vocab.get(eom_token) if eom_token else None,
        pad_id=pad_id,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=read_chat_template(src_dir, tok_config),
        special=special_ids,
    )


def write_tokenizer(writer: Any, tok: BpeTokenizer, pre: str) -> None:
    """tokenizer.ggml.* for a byte-level BPE vocabulary (`model = gpt2`) with the named
    pre-tokenizer (llama.cpp recognises `llama-bpe` for Llama 3, `llama4` for Llama 4)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.token_types)
    writer.add_token_merges(tok.merges)
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    if tok.eos_id is not None:
        writer.add_eos_token_id(tok.eos_id)
    if tok.eot_id is not None:
        writer.add_eot_token_id(tok.eot_id)
    if tok.eom_id is not None:
        writer.add_eom_token_id(tok.eom_id)
    if tok.pad_id is not None:
        writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(tok.add_bos)
    writer.add_add_eos_token(tok.add_eos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


# ----------------------------------------------------------------------------- metadata

def _readme_license(src_dir: Path) -> str | None:
    readme = src_dir / "README.md"
    if not readme.is_file():
        return None
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")[:8192]
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    front = text[3:].split("\n---", 1)[0]
    match = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front, re.MULTILINE)
    return match.group(1).strip() if match else None


def model_name(src_dir: Path, config: dict[str, Any]) -> str:
    name = str(config.get("_name_or_path") or "").strip().rstrip("/")
    if name:
        return name.split("/")[-1]
    resolved = Path(src_dir).resolve()
    # a Hub cache snapshot: models--OWNER--NAME/snapshots/<hash>
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent.name.split("--")[-1]
    return resolved.name


def write_general(writer: Any, src_dir: Path, config: dict[str, Any], outtype: str,
                  name: str | None = None, n_params: int | None = None) -> None:
    """general.* metadata: name, license (from the model card's front matter), file type,
    quantization version, and what the file was converted by."""
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_name(src_dir, config))
    lic = _readme_license(Path(src_dir))
    if lic:
        writer.add_license(lic)
    if n_params:
        writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    writer.add_file_type(file_type_for(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("general.converted_by", "llamactl")
