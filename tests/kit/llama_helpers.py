"""Helpers for tests that run the real llama.cpp on the kit's GGUFs and read them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_llama(path: Path, *, n_ctx: int = 512, logits_all: bool = False, f32_cache: bool = False, **kw: Any):
    """llama_cpp.Llama on a GGUF, quiet, deterministic (one thread count, fixed seed).
    f32_cache: an F32 KV cache, so that parity checks measure the weights' type only."""
    import llama_cpp

    if f32_cache:
        kw.setdefault("type_k", llama_cpp.GGML_TYPE_F32)
        kw.setdefault("type_v", llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, seed=0,
                           n_threads=2, **kw)


def all_logits(llm, ids: list[int]):
    """llama.cpp's logits of every position of `ids` (a fresh KV cache), as numpy."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def read_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata key -> python value, tensor name -> ReaderTensor) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    tensors = {t.name: t for t in reader.tensors}
    return meta, tensors


def split_gguf(src: Path, out_dir: Path, max_tensors: int) -> list[Path]:
    """Rewrite a GGUF as split parts (NAME-00001-of-0000N.gguf) of at most `max_tensors`
    tensors each, with the split.* keys llama.cpp reads; returns the parts, first first."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / Path(src).name
    writer = gguf.GGUFWriter(str(base), arch, split_max_tensors=max_tensors)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=list(reversed([int(x) for x in t.shape])),
                          raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parts = sorted(out_dir.glob(Path(src).stem + "-*-of-*.gguf"))
    return parts


def write_imatrix(gguf_path: Path, out: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A synthetic importance matrix (llama.cpp's GGUF imatrix layout: NAME.in_sum2 and
    NAME.counts) for every matrix of a model, with positive random activations."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(gguf_path))
    writer = gguf.GGUFWriter(str(out), "imatrix")
    writer.add_type("imatrix")
    writer.add_uint32("imatrix.chunk_count", 4)
    writer.add_uint32("imatrix.chunk_size", 512)
    writer.add_array("imatrix.datasets", ["synthetic"])
    rng = np.random.default_rng(0)
    for t in reader.tensors:
        if len(t.shape) != 2 or t.name in skip:
            continue
        ne0 = int(t.shape[0])
        writer.add_tensor(t.name + ".in_sum2", (rng.random((1, ne0), dtype=np.float32) + 0.5) * 2048)
        writer.add_tensor(t.name + ".counts", np.array([[2048.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
