"""Images for Llama 4: reading a file safely, the tiles the model sees, and their tokens.

Llama 4 does its own image preprocessing here rather than mtmd's, because the two differ
(llama.cpp vendored in llama-cpp-python 0.3.36, checked by tests/test_images_parity.py):
mtmd slices Llama 4 images on a grid of at most 3x3 tiles chosen llava-style, and since a
refactor of its `init_vision` it writes no `<|tile_x_separator|>`, `<|tile_y_separator|>` or
`<|image|>` tokens (the regression reported as llama.cpp issue 21871: Scout's answers go
wrong for images larger than one tile). Meta's preprocessing (transformers'
`Llama4ImageProcessor` and `Llama4Processor`) is, and is what this module reproduces:

1. Canvas: among every grid of rows x cols tiles with rows*cols <= max_tiles (16), the one
   that needs the smallest upscale (or, if none can hold the image unscaled, the smallest
   downscale) without distortion; ties go to the smallest area.
2. The image is resized to fit that canvas without distortion (never upscaled beyond one
   tile's side), pasted top-left, padded with black, and cut into tiles row by row.
3. More than one tile: a global tile (the whole image squeezed to one tile) follows.
4. Tokens: `<|image_start|>`, then per row each tile's tokens with `<|tile_x_separator|>`
   between tiles and `<|tile_y_separator|>` after the row, then `<|image|>` and the global
   tile's tokens (the only tile's, for a one-tile image), then `<|image_end|>`.

Each tile, exactly one tile's size, is then encoded by mtmd on its own (mtmd neither resizes
nor slices an image of its tile size), so only mtmd's encoder is used (llamactl.engine.images).

Resizing uses Pillow's antialiased bilinear filter; transformers uses torchvision's
antialiased bilinear (built to match Pillow's); torchvision cannot be installed beside the
CPU torch here, so the two have not been compared pixel for pixel. transformers also rounds
the normalized pixels to bfloat16; mtmd normalizes in float32."""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llamactl.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

# The largest image llamactl decodes: a header that claims more is refused before any
# pixel is read (50000x50000 would need 7.5 GB).
MAX_PIXELS = 64 * 1024 * 1024
MAX_SIDE = 16384

IMAGE_START, IMAGE_END, IMAGE = "<|image_start|>", "<|image_end|>", "<|image|>"
TILE_X, TILE_Y = "<|tile_x_separator|>", "<|tile_y_separator|>"


@dataclass
class ImageFile:
    """A decoded RGB image: its pixels (uint8, height x width x 3) and a digest of them."""

    path: str
    pixels: "np.ndarray"
    digest: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def read_image(path: str | Path) -> ImageFile:
    """Open and fully decode an image file. Raises UsageError (exit 2) with one line for a
    missing file, a file that is not an image, a truncated or corrupt one, or one whose
    header claims more than MAX_PIXELS pixels (checked before decoding)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"image not found: {p}" if not p.exists() else f"not a file: {p}")
    return _decode(p, str(p))


def read_image_bytes(data: bytes, label: str = "the image") -> ImageFile:
    """`read_image` for an image held in memory (a data: URL's bytes); `label` names it in
    errors and stands as its path."""
    import io

    return _decode(io.BytesIO(data), label)


def _decode(source, label: str) -> ImageFile:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = label
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # llamactl's own limit (lower than Pillow's) is checked below on the header's
            # size, so that the message can say what the header claims
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            with img:
                w, h = img.size
                if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
                    raise UsageError(f"{p}: the image claims {w}x{h} pixels; llamactl reads images up to "
                                     f"{MAX_SIDE} pixels a side and {MAX_PIXELS // 2**20} megapixels",
                                     hint="scale it down first")
                if w < 1 or h < 1:
                    raise UsageError(f"{p}: the image has no pixels ({w}x{h})")
                img.load()
                rgb = img.convert("RGB") if img.mode != "RGB" else img
                pixels = np.asarray(rgb, dtype=np.uint8).copy()
    except UsageError:
        raise
    except UnidentifiedImageError:
        raise UsageError(f"{p}: not an image file (llamactl reads PNG, JPEG, WebP, GIF and BMP)") from None
    except Image.DecompressionBombError:
        raise UsageError(f"{p}: the image's header claims more pixels than llamactl reads "
                         f"({MAX_PIXELS // 2**20} megapixels at most)", hint="scale it down first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        raise UsageError(f"{p}: the image cannot be decoded ({reason}); is the file truncated?") from None
    digest = hashlib.sha256(pixels.tobytes() + f"{pixels.shape}".encode()).hexdigest()
    return ImageFile(label, pixels, digest)


# ------------------------------------------------------------------------------ tiling

def canvases(max_tiles: int) -> list[tuple[int, int]]:
    """Every grid (rows, cols) with rows * cols <= max_tiles, in Llama4ImageProcessor's
    order (by tile count from the most, grouped by aspect ratio in order of first sight):
    the order decides ties."""
    groups: dict[float, list[tuple[int, int]]] = {}
    for n in range(max_tiles, 0, -1):
        for rows in sorted(d for d in range(1, n + 1) if n % d == 0):
            groups.setdefault(rows / (n // rows), []).append((rows, n // rows))
    return [grid for group in groups.values() for grid in group]


def best_canvas(height: int, width: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """The grid (rows, cols) an image of height x width pixels is fitted into."""
    import numpy as np

    grids = canvases(max_tiles)
    # in float32, as transformers computes them (equal scales decide between canvases)
    h, w = np.float32(height), np.float32(width)
    scales = [min(np.float32(r * tile) / h, np.float32(c * tile) / w) for r, c in grids]
    up = [s for s in scales if s >= 1]
    chosen = min(up) if up else max(scales)
    fits = [(r * c, i) for i, (s, (r, c)) in enumerate(zip(scales, grids)) if s == chosen]
    return grids[min(fits)[1]]


def fitted_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The largest (height, width) inside target_h x target_w with the image's aspect ratio
    (the side that limits is exact, the other rounded down; never 0)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.floor(height * scale_w), target_h)
    else:
        new_h, new_w = target_h, min(math.floor(width * scale_h), target_w)
    return max(new_h, 1), max(new_w, 1)


@dataclass
class TilePlan:
    rows: int
    cols: int
    resized: tuple[int, int]        # (height, width) of the image pasted into the canvas
    tile: int

    @property
    def n_tiles(self) -> int:
        """Tiles encoded: the grid, plus the global tile when the grid has more than one."""
        return self.rows * self.cols + (1 if self.rows * self.cols > 1 else 0)


def plan_tiles(height: int, width: int, tile: int, max_tiles: int) -> TilePlan:
    rows, cols = best_canvas(height, width, tile, max_tiles)
    # upscaling is capped at one tile's side (resize_to_max_canvas=False)
    cap_h = min(max(height, tile), rows * tile)
    cap_w = min(max(width, tile), cols * tile)
    return TilePlan(rows, cols, fitted_size(height, width, cap_h, cap_w), tile)


def _resize(pixels: "np.ndarray", height: int, width: int) -> "np.ndarray":
    import numpy as np
    from PIL import Image

    if pixels.shape[0] == height and pixels.shape[1] == width:
        return pixels
    img = Image.fromarray(pixels, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def make_tiles(pixels: "np.ndarray", plan: TilePlan) -> list["np.ndarray"]:
    """The tiles of an image (uint8, tile x tile x 3 each), row by row, then the global tile."""
    import numpy as np

    t = plan.tile
    canvas = np.zeros((plan.rows * t, plan.cols * t, 3), dtype=np.uint8)
    small = _resize(pixels, *plan.resized)
    canvas[: small.shape[0], : small.shape[1]] = small
    tiles = [np.ascontiguousarray(canvas[r * t:(r + 1) * t, c * t:(c + 1) * t])
             for r in range(plan.rows) for c in range(plan.cols)]
    if plan.rows * plan.cols > 1:
        tiles.append(np.ascontiguousarray(_resize(pixels, t, t)))
    return tiles


# ------------------------------------------------------------------------------ layout

@dataclass
class Layout:
    """An image's place in the prompt: text pieces (special tokens, by their text) and
    tiles (by index into the tiles of make_tiles), in order."""

    items: list[str | int] = field(default_factory=list)
    tokens_per_tile: int = 0

    @property
    def n_image_tokens(self) -> int:
        return sum(self.tokens_per_tile for x in self.items if isinstance(x, int))

    @property
    def n_tokens(self) -> int:
        return self.n_image_tokens + sum(1 for x in self.items if isinstance(x, str))


def layout(plan: TilePlan, tokens_per_tile: int) -> Layout:
    """Llama4Processor's token layout for an image tiled as `plan`."""
    items: list[str | int] = [IMAGE_START]
    if plan.rows * plan.cols > 1:
        for r in range(plan.rows):
            for c in range(plan.cols):
                items.append(r * plan.cols + c)
                if c < plan.cols - 1:
                    items.append(TILE_X)
            items.append(TILE_Y)
        items += [IMAGE, plan.rows * plan.cols]
    else:
        items += [IMAGE, 0]
    items.append(IMAGE_END)
    return Layout(items, tokens_per_tile)


def expand(lay: Layout, patch_token: str = "<|patch|>") -> str:
    """The layout as Llama4Processor's text (each image token as `patch_token`)."""
    return "".join(x if isinstance(x, str) else patch_token * lay.tokens_per_tile for x in lay.items)



# ---------------------------------------------------------------------- the projector file

def find_projector(model_path: str | Path, entry: dict | None = None,
                   explicit: str | Path | None = None) -> Path | None:
    """The vision projector (mmproj GGUF) that goes with a model: `explicit` when given (it
    must exist), else the one its registry entry records (`entry["mmproj"]["path"]`), else
    one beside the model file: `mmproj-NAME.gguf` for NAME.gguf (what `llamactl convert`
    writes), else the only `mmproj*.gguf` in its folder. None when there is none; several
    candidates and no rule to choose: UsageError naming them."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise UsageError(f"projector not found: {p}")
        return p
    recorded = ((entry or {}).get("mmproj") or {}).get("path")
    if recorded:
        p = Path(recorded)
        if not p.is_file():
            from llamactl.errors import IntegrityError

            raise IntegrityError(f"the registered projector {p} is missing",
                                 hint="pull the model again to fetch it")
        return p
    model_path = Path(model_path)
    folder = model_path.parent
    from llamactl.gguf_split import parse_split_name

    split = parse_split_name(model_path.name)
    stem = split.stem if split else model_path.stem
    named = folder / f"mmproj-{stem}.gguf"
    if named.is_file():
        return named
    found = sorted(p for p in folder.glob("mmproj*.gguf") if p.is_file())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UsageError(f"{len(found)} projector files beside {model_path.name} "
                         f"({', '.join(p.name for p in found[:4])}): which one goes with it?",
                         hint="choose with --mmproj FILE")
    return None
