"""A vision projector (mmproj GGUF) loaded by llama.cpp's mtmd, and image embeddings in the
text model's context.

`ProjectorInfo.read` reads a projector's header (no weights): only Llama 4 projectors
(`clip.projector_type llama4`) are accepted, since llamactl does Llama 4's tiling and token
layout itself (llamactl.images). `Projector` holds an mtmd context bound to a loaded text
model; `encode_tile` turns one tile (exactly the projector's tile size, so mtmd neither
resizes nor slices it) into its embeddings, [tokens_per_tile, n_embd] float32.
`decode_embeddings` evaluates rows of embeddings at the end of a llama.cpp context, as
`Llama.eval` does for tokens; the engine's decode path calls it for image positions."""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamactl.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_TILES = 16


@dataclass
class ProjectorInfo:
    path: Path
    projector_type: str
    tile: int                   # clip.vision.image_size
    patch: int
    scale: int                  # pixel-shuffle factor per side
    max_tiles: int              # clip.vision.preproc_max_tiles, else Llama 4's 16
    n_embd: int                 # the text model's width it projects to
    tensor_bytes: int
    n_params: int
    vision_embd: int = 0        # the ViT's width, heads and FFN width (for the compute estimate)
    vision_heads: int = 0
    vision_ff: int = 0

    def compute_bytes(self) -> int:
        """An estimate of mtmd's compute buffer for one tile (float32 activations): the
        attention matrix without flash attention (mtmd may not get it on a GPU), the FFN's
        hidden layer and a few hidden-wide buffers. On a Scout-shaped tower (336-pixel
        tiles, width 1408, 16 heads, FFN 5632) this is 42 MiB; mtmd reserved 37.1 MiB
        without and 19.9 MiB with flash attention (CPU, llama-cpp-python 0.3.36)."""
        n_pos = (self.tile // self.patch) ** 2 + 1
        return 4 * n_pos * (self.vision_ff + 3 * self.vision_embd) + 4 * self.vision_heads * n_pos * n_pos

    @property
    def tokens_per_tile(self) -> int:
        return ((self.tile // self.patch) // self.scale) ** 2

    @classmethod
    def read(cls, path: str | Path) -> "ProjectorInfo":
        import gguf

        p = Path(path)
        if not p.is_file():
            raise UsageError(f"projector not found: {p}")
        try:
            reader = gguf.GGUFReader(str(p))
        except Exception as exc:  # gguf raises ValueError, struct errors, numpy errors...
            raise IntegrityError(f"{p} is not a readable GGUF file: {exc}") from None

        def field(key: str, default: Any = None) -> Any:
            f = reader.fields.get(key)
            if f is None:
                return default
            value = f.contents()
            return value

        arch = field("general.architecture")
        ptype = field("clip.projector_type") or field("clip.vision.projector_type")
        if arch != "clip" or not field("clip.has_vision_encoder", False):
            raise UsageError(f"{p} is not a vision projector (general.architecture {arch!r})",
                             hint="pass the mmproj-*.gguf file that belongs to the model")
        if ptype != "llama4":
            raise UsageError(f"{p} is a {ptype!r} projector; llamactl reads Llama 4 projectors only")
        try:
            tile = int(field("clip.vision.image_size"))
            patch = int(field("clip.vision.patch_size"))
            scale = int(field("clip.vision.projector.scale_factor", 2))
            n_embd = int(field("clip.vision.projection_dim"))
        except (TypeError, ValueError):
            raise IntegrityError(f"{p}: a Llama 4 projector without image_size, patch_size or "
                                 "projection_dim") from None
        max_tiles = int(field("clip.vision.preproc_max_tiles", DEFAULT_MAX_TILES) or DEFAULT_MAX_TILES)
        if patch <= 0 or scale <= 0 or tile % patch or (tile // patch) % scale:
            raise IntegrityError(f"{p}: tile {tile}, patch {patch} and scale {scale} do not fit together")
        size = sum(int(t.n_bytes) for t in reader.tensors)
        n_params = sum(int(t.n_elements) for t in reader.tensors)
        return cls(p, ptype, tile, patch, scale, max_tiles, n_embd, size, n_params,
                   int(field("clip.vision.embedding_length", 0) or 0),
                   int(field("clip.vision.attention.head_count", 0) or 0),
                   int(field("clip.vision.feed_forward_length", 0) or 0))


class Projector:
    """An mtmd context for a Llama 4 projector, bound to a loaded text model."""

    def __init__(self, info: ProjectorInfo, llama: Any, *, n_threads: int | None = None,
                 use_gpu: bool = False):
        import llama_cpp
        from llama_cpp import mtmd_cpp

        self.info = info
        model_embd = int(llama_cpp.llama_model_n_embd(llama.model))
        if model_embd != info.n_embd:
            raise UsageError(f"{info.path} projects to {info.n_embd} dimensions; the model has {model_embd}: "
                             "this projector belongs to another model",
                             hint="pass the model's own mmproj file with --mmproj")
        from llamactl.engine import bindings

        bindings.route_mtmd_log()
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = bool(use_gpu)
        params.print_timings = False
        params.warmup = False
        params.n_threads = int(n_threads or llama.n_threads or 1)
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(info.path).encode(), llama.model, params)
        if not self._ctx:
            raise IntegrityError(f"llama.cpp's mtmd could not load the projector {info.path}",
                                 hint="run with --verbose for llama.cpp's log")
        self.n_embd = model_embd
        self.encoded_tiles = 0          # for tests and stats: tiles run through the encoder

    def encode_tile(self, tile: "np.ndarray") -> "np.ndarray":
        """Embeddings of one tile (uint8, tile x tile x 3): [tokens_per_tile, n_embd]."""
        import numpy as np
        from llama_cpp import mtmd_cpp

        t = self.info.tile
        if tile.shape != (t, t, 3) or tile.dtype != np.uint8:
            raise ValueError(f"a tile must be uint8 {t}x{t}x3, not {tile.dtype} {tile.shape}")
        data = np.ascontiguousarray(tile)
        buf = (ctypes.c_uint8 * data.size).from_buffer_copy(data.tobytes())
        bitmap = mtmd_cpp.mtmd_bitmap_init(t, t, buf)
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            text = mtmd_cpp.mtmd_input_text()
            marker = mtmd_cpp.mtmd_default_marker()
            text.text, text.text_len = marker, len(marker)
            text.add_special, text.parse_special = False, True
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd_cpp.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), bitmaps, 1)
            if rc != 0:
                raise IntegrityError(f"mtmd could not prepare an image tile (error {rc})")
            images = [mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                      for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks))]
            images = [c for c in images if mtmd_cpp.mtmd_input_chunk_get_type(c)
                      == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE]
            want = self.info.tokens_per_tile
            if len(images) != 1 or mtmd_cpp.mtmd_input_chunk_get_n_tokens(images[0]) != want:
                got = [mtmd_cpp.mtmd_input_chunk_get_n_tokens(c) for c in images]
                raise IntegrityError(f"mtmd made {got} image tokens of one {t}-pixel tile, expected [{want}]: "
                                     "this llama.cpp preprocesses Llama 4 tiles differently")
            rc = mtmd_cpp.mtmd_encode_chunk(self._ctx, images[0])
            if rc != 0:
                raise IntegrityError(f"mtmd could not encode an image tile (error {rc})")
            out = mtmd_cpp.mtmd_get_output_embd(self._ctx)
            embd = np.ctypeslib.as_array(out, shape=(want * self.n_embd,)).reshape(want, self.n_embd).copy()
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)
        self.encoded_tiles += 1
        return embd if self.raw_order else column_to_row_major(embd)

    raw_order = False   # tests only: mtmd's own token order

    def close(self) -> None:
        from llama_cpp import mtmd_cpp

        if getattr(self, "_ctx", None):
            mtmd_cpp.mtmd_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def column_to_row_major(embd: "np.ndarray") -> "np.ndarray":
    """A tile's embeddings in transformers' order. mtmd's Llama 4 pixel shuffle (0.3.36)
    emits the s x s merged tokens column by column (token x*s + y), transformers' (the
    reference, and what the model was trained on) row by row (y*s + x); the values are
    the same (tests/test_images_parity.py checks both)."""
    n, n_embd = embd.shape
    side = int(round(n ** 0.5))
    return embd.reshape(side, side, n_embd).transpose(1, 0, 2).reshape(n, n_embd).copy()


def decode_embeddings(llama: Any, embd: "np.ndarray", placeholders: list[int]) -> None:
    """Evaluate rows of embeddings (float32 [n, n_embd]) after the tokens already in
    `llama`'s context, in batches of n_batch, the last row's logits kept, as `Llama.eval`
    does for tokens; `placeholders` (one int per row) stand for them in `llama.input_ids`,
    so that the engine's prefix comparison sees which image each position holds."""
    import llama_cpp
    import numpy as np

    from llamactl.engine import bindings

    n, n_embd = embd.shape
    keep_all = bindings.logits_all(llama)
    if len(placeholders) != n:
        raise ValueError("one placeholder per embedding row")
    step = max(1, int(llama.n_batch))
    data = np.ascontiguousarray(embd, dtype=np.float32)
    batch = llama_cpp.llama_batch_init(step, n_embd, 1)
    try:
        for i in range(0, n, step):
            rows = data[i:i + step]
            k = rows.shape[0]
            n_past = int(llama.n_tokens)
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            batch.n_tokens = k
            for j in range(k):
                batch.pos[j] = n_past + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = keep_all or j == k - 1
            rc = llama_cpp.llama_decode(llama.ctx, batch)
            if rc != 0:
                raise IntegrityError(f"llama.cpp could not evaluate image embeddings (llama_decode {rc})")
            bindings.record_evaluated(llama, n_past, placeholders[i:i + k])
    finally:
        llama_cpp.llama_batch_free(batch)


def decode_rows(ctx: Any, embd: "np.ndarray", pos0: int, seq: int, n_batch: int) -> None:
    """Evaluate rows of embeddings at positions pos0.. of sequence `seq` of a llama.cpp
    context (the server's slots), in batches of n_batch, without logits (an image is never
    the end of a prompt: `<|image_end|>` follows it)."""
    import llama_cpp
    import numpy as np

    n, n_embd = embd.shape
    step = max(1, int(n_batch))
    data = np.ascontiguousarray(embd, dtype=np.float32)
    batch = llama_cpp.llama_batch_init(step, n_embd, 1)
    try:
        for i in range(0, n, step):
            rows = data[i:i + step]
            k = rows.shape[0]
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            batch.n_tokens = k
            for j in range(k):
                batch.pos[j] = pos0 + i + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = 0
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise IntegrityError(f"llama.cpp could not evaluate image embeddings (llama_decode {rc})")
    finally:
        llama_cpp.llama_batch_free(batch)


# ------------------------------------------------------------------ images in a prompt

PLACEHOLDER_ROWS = 1024   # rows per tile key in a placeholder id (Scout's tiles have 144)
IMAGE_TOKEN_BASE = 1 << 30  # ids <= -IMAGE_TOKEN_BASE stand for a whole image (see ImageTokens)
IMAGE_PLACE = "<|image|>"   # what Llama 4's chat template writes for an image part
_MARKER = re.compile("\ue000image([0-9]+)\ue001")


def is_placeholder(token: int) -> bool:
    """A position of an image in a prompt as evaluated (negative ids)."""
    return token < 0


def is_image_token(token: int) -> bool:
    """A whole image in a prompt before its layout is expanded (see ImageTokens.virtual)."""
    return token <= -IMAGE_TOKEN_BASE


def split_markers(text: str) -> list[str | int]:
    """Rendered text with image markers -> text pieces and virtual image ids, in order."""
    out: list[str | int] = []
    pos = 0
    for m in _MARKER.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        out.append(-(IMAGE_TOKEN_BASE + int(m.group(1))))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


class ImageTokens:
    """Images placed in prompts, for one engine: token ids for their layouts, in which each
    image position is a negative placeholder id unique to (image, tile, row); the tiles are
    encoded only when a position must be evaluated (an image already in the KV cache is not
    encoded again), and the encoded tiles are kept for the conversation."""

    def __init__(self, projector: Projector, token_id):
        self.projector = projector
        self._token_id = token_id               # special token text -> id (the model's vocabulary)
        self._keys: dict[tuple[str, int], int] = {}
        self._tiles: dict[int, tuple[str, int]] = {}    # key -> (image digest, tile index)
        self._sources: dict[str, tuple[Any, Any]] = {}  # digest -> (ImageFile, TilePlan)
        self._encoded: dict[int, "np.ndarray"] = {}
        self._virtual: dict[str, int] = {}              # digest -> index of its virtual id
        self._by_index: list[Any] = []

    # A whole image stands in a prompt as one virtual id until the prompt is evaluated: the
    # engine's prefix comparison reads it as its marker text, which the rendered template
    # holds where the image goes; `expand` replaces it with the image's layout.

    def virtual(self, image: Any) -> int:
        if image.digest not in self._virtual:
            self._virtual[image.digest] = len(self._by_index)
            self._by_index.append(image)
            self.plan(image)
        return -(IMAGE_TOKEN_BASE + self._virtual[image.digest])

    def marker(self, token: int) -> str:
        return f"\ue000image{-token - IMAGE_TOKEN_BASE}\ue001"

    def image_of(self, token: int) -> Any:
        return self._by_index[-token - IMAGE_TOKEN_BASE]

    def expand(self, tokens: list[int]) -> tuple[list[int], int]:
        """(tokens with every virtual image id replaced by its layout, image positions)."""
        out, _, n_image = self.expand_flags(tokens, [True] * len(tokens))
        return out, n_image

    def expand_flags(self, tokens: list[int], flags: list[bool]) -> tuple[list[int], list[bool], int]:
        """`expand` with a per-token flag list expanded alongside (layout tokens: True)."""
        out: list[int] = []
        out_flags: list[bool] = []
        n_image = 0
        for t, f in zip(tokens, flags):
            if is_image_token(t):
                lay = self.tokens(self.image_of(t))
                n_image += sum(1 for x in lay if is_placeholder(x))
                out.extend(lay)
                out_flags.extend([True] * len(lay))
            else:
                out.append(t)
                out_flags.append(f)
        return out, out_flags, n_image

    def plan(self, image: Any):
        from llamactl import images

        info = self.projector.info
        if image.digest not in self._sources:
            self._sources[image.digest] = (image, images.plan_tiles(image.height, image.width, info.tile,
                                                                    info.max_tiles))
        return self._sources[image.digest][1]

    def tokens(self, image: Any) -> list[int]:
        """The token ids of `image`'s layout (placeholders at image positions)."""
        from llamactl import images

        tile_plan = self.plan(image)
        lay = images.layout(tile_plan, self.projector.info.tokens_per_tile)
        out: list[int] = []
        for item in lay.items:
            if isinstance(item, str):
                out.append(self._token_id(item))
                continue
            key = self._keys.setdefault((image.digest, item), len(self._keys) + 1)
            self._tiles[key] = (image.digest, item)
            out.extend(-(key * PLACEHOLDER_ROWS + r) - 1 for r in range(lay.tokens_per_tile))
        return out

    def count(self, image: Any) -> tuple[int, int]:
        """(prompt tokens, image tokens) the image takes, without encoding anything."""
        from llamactl import images

        lay = images.layout(self.plan(image), self.projector.info.tokens_per_tile)
        return lay.n_tokens, lay.n_image_tokens

    def embeddings(self, placeholders: list[int]) -> "np.ndarray":
        """The embedding rows of `placeholders`, encoding the tiles not encoded yet."""
        import numpy as np

        from llamactl import images

        rows = []
        for p in placeholders:
            key, row = divmod(-p - 1, PLACEHOLDER_ROWS)
            if key not in self._encoded:
                digest, index = self._tiles[key]
                image, tile_plan = self._sources[digest]
                tiles = images.make_tiles(image.pixels, tile_plan)
                self._encoded[key] = self.projector.encode_tile(tiles[index])
            rows.append(self._encoded[key][row])
        return np.stack(rows)


def eval_prompt(llama: Any, tokens: list[int], images: ImageTokens | None) -> None:
    """Evaluate `tokens` after what `llama`'s context holds: runs of token ids through
    `Llama.eval`, runs of image placeholders as their embeddings."""
    i, n = 0, len(tokens)
    while i < n:
        j = i
        image = is_placeholder(tokens[i])
        while j < n and is_placeholder(tokens[j]) == image:
            j += 1
        run = tokens[i:j]
        if image:
            if images is None:
                raise UsageError("this prompt holds an image but the model has no projector")
            decode_embeddings(llama, images.embeddings(run), run)
        else:
            llama.eval(run)
        i = j
