"""The one preprocessing code path shared by ingest, train, evaluate and the predictor.

Images travel as uint8 tensors (N, 3, H, W) from decoding until the last moment, because
that is compact in memory and identical whether a pixel came from a PPM on disk or a PNG
in an HTTP request. `prepare` and `standardize` turn them into model input; training adds
its augmentation between those two calls and nothing else differs.
"""

from __future__ import annotations

import io
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

# Decompression-bomb guard for anything we decode; the predictor sets a tighter limit.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """An image could not be decoded; the message names its source."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to reproduce the model's input exactly; stored in the model config."""

    image_size: int = 32
    # "equalize": per-image histogram equalization, which evens out GTSRB's many very dark
    # and washed-out photos; "clahe": the same per 8x8-pixel tile, contrast-limited and blended between
    # tiles (`clahe`), so a dark sign on a bright sky is stretched on its own; "none": pixels as they are.
    contrast: str = "equalize"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.29, 0.29, 0.29)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        return cls(
            image_size=int(data["image_size"]),
            contrast=str(data.get("contrast", "none")),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.contrast not in CONTRAST_MODES:
            raise ValueError(f"contrast must be one of {sorted(CONTRAST_MODES)}, got {self.contrast!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")


CONTRAST_MODES = {"equalize", "clahe", "none"}
CLAHE_TILE = 8  # pixels per tile side: 4x4 tiles on a 32x32 image
CLAHE_CLIP = 2.0  # a tile's histogram bins are cut at this multiple of a flat histogram's height (at least 1)


def clahe(batch: torch.Tensor, tile: int = CLAHE_TILE, clip: float = CLAHE_CLIP) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalization of a uint8 (N, C, H, W) batch, per image and channel.

    Each tile's histogram is clipped at `clip` times the flat height (the excess spread over all levels, which
    bounds how much noise in a flat tile is stretched) and turned into a mapping by its cumulative sum; every
    pixel blends the mappings of its four nearest tile centres bilinearly, so no tile edges appear. The same
    construction as OpenCV's `createCLAHE`, vectorized in torch, deterministic and per image (a batch's result
    never depends on what else is in it).
    """
    n, c, h, w = batch.shape
    grid_y, grid_x = max(1, h // tile), max(1, w // tile)
    th, tw = h // grid_y, w // grid_x
    area = th * tw
    planes = batch.reshape(n * c, h, w)
    tiles = planes[:, : th * grid_y, : tw * grid_x].reshape(n * c, grid_y, th, grid_x, tw).permute(0, 1, 3, 2, 4)
    tiles = tiles.reshape(n * c * grid_y * grid_x, area).long()
    hist = torch.zeros(tiles.shape[0], 256).scatter_add_(1, tiles, torch.ones(tiles.shape, dtype=torch.float32))
    limit = max(clip * area / 256, 1.0)
    excess = (hist - limit).clamp_(min=0).sum(1, keepdim=True)
    hist = hist.clamp_(max=limit) + excess / 256
    lut = (hist.cumsum(1) * (255.0 / area)).clamp_(0, 255).reshape(n * c, grid_y * grid_x * 256)
    # Each pixel's position in tile units, tile centres at integers; outside the outer centres it clamps.
    fy = (torch.arange(h, dtype=torch.float32) + 0.5) / th - 0.5
    fx = (torch.arange(w, dtype=torch.float32) + 0.5) / tw - 0.5
    y0, x0 = fy.floor().clamp(0, grid_y - 1).long(), fx.floor().clamp(0, grid_x - 1).long()
    y1, x1 = (y0 + 1).clamp(max=grid_y - 1), (x0 + 1).clamp(max=grid_x - 1)
    wy, wx = (fy - y0).clamp(0, 1).view(h, 1), (fx - x0).clamp(0, 1).view(1, w)
    levels = planes.reshape(n * c, h * w).long()

    def mapped(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        index = ((ty.view(h, 1) * grid_x + tx.view(1, w)) * 256).reshape(1, h * w) + levels
        return lut.gather(1, index).view(n * c, h, w)

    top = mapped(y0, x0) * (1 - wx) + mapped(y0, x1) * wx
    bottom = mapped(y1, x0) * (1 - wx) + mapped(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).round_().clamp_(0, 255).to(torch.uint8).view(n, c, h, w)


# The formats anything here decodes, by Pillow's name for them (`Image.open(...).format`). Training data
# (GTSRB's PPM files, ImageFolder datasets of PNG/JPEG) and predictor requests share this list; every other
# plugin Pillow has (GIF, TIFF, WebP, BMP, ICO, PSD, ...) is more parser code facing untrusted bytes for no
# use here. MPO is how Pillow names a JPEG with an extra picture appended (phone cameras write them); only
# the first picture is read. "PPM" covers the whole netpbm family Pillow reads (P1-P6: PBM, PGM, PPM).
ALLOWED_IMAGE_FORMATS = ("PNG", "JPEG", "PPM")  # Pillow's JPEG plugin opens MPO files itself


def _format_of(data: bytes) -> str | None:
    """Pillow's name for a format it can read but this project does not, for the error message."""
    try:
        with Image.open(io.BytesIO(data)) as img:  # header only; the pixels are never decoded
            return img.format
    except Exception:  # only naming the refusal: whatever Pillow makes of the bytes
        return None


def open_image(data: bytes, *, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read only the header of PNG/JPEG/PPM bytes: the format and size are checked before any pixel is decoded.

    Pillow's `Image.open` is lazy (it parses the header and stops), so a caller can add up the pixels of
    many images (the predictor's per-request budget) before paying for decoding any of them. Formats
    outside ALLOWED_IMAGE_FORMATS are refused by name; `finish_image` decodes what this returns.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=list(ALLOWED_IMAGE_FORMATS))
    except UnidentifiedImageError as exc:  # PIL's own message names a BytesIO object, not the input
        if not data:
            raise ImageDecodeError(f"{source}: cannot decode image (empty input)") from exc
        allowed = ", ".join(ALLOWED_IMAGE_FORMATS)
        fmt = _format_of(data)
        if fmt is not None:
            raise ImageDecodeError(f"{source}: image format {fmt} is not accepted; send one of {allowed}") from exc
        raise ImageDecodeError(f"{source}: cannot decode image (not a {allowed} file)") from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        # Pillow's decoders raise SyntaxError/struct.error on damaged chunks (found by the fuzz tests).
        raise ImageDecodeError(f"{source}: cannot decode image ({exc})") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise ImageDecodeError(f"{source}: image is {w}x{h} = {w * h} pixels, limit is {max_pixels}")
    return img


def finish_image(img: Image.Image, *, source: str) -> Image.Image:
    """Decode the pixels of an image `open_image` returned, as RGB."""
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{source}: cannot decode image ({exc})") from exc


def decode_image(data: bytes, *, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/PPM bytes to RGB, refusing other formats and oversized images before the pixels are read."""
    return finish_image(open_image(data, source=source, max_pixels=max_pixels), source=source)


def image_to_uint8(img: Image.Image, image_size: int) -> torch.Tensor:
    """RGB PIL image -> (3, S, S) uint8, resized with antialiasing when its size differs."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_image_file(path: Path, image_size: int) -> torch.Tensor:
    """Read one image file as (3, S, S) uint8; errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc})") from exc
    return image_to_uint8(decode_image(data, source=str(path)), image_size)


def resize_uint8(batch: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize a uint8 (N, 3, H, W) batch to the model's size (for raw tensors sent to the predictor)."""
    if batch.shape[-2:] == (image_size, image_size):
        return batch
    out = F.interpolate(
        batch.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def prepare_uint8(batch: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 at the model's size, contrast applied: `prepare` before its float conversion.

    Per image, so a batch's result never depends on what else is in it; training applies it once to the
    whole split instead of to every batch of every epoch.
    """
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected uint8 tensor of shape (N, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
    batch = resize_uint8(batch, cfg.image_size)
    if cfg.contrast == "equalize":
        batch = TF.equalize(batch)
    elif cfg.contrast == "clahe":
        batch = clahe(batch)
    return batch


def prepare(batch: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1] at the model's size, contrast applied."""
    return prepare_uint8(batch, cfg).float().div_(255.0)


def standardize(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Per-channel standardization; returns channels_last memory for faster CPU convolutions."""
    mean = torch.tensor(cfg.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def to_model_input(batch: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The whole inference-time path: uint8 images -> standardized float input."""
    return standardize(prepare(batch, cfg), cfg)


def float_chw_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (N, 3, H, W) -> uint8, so float and uint8 inputs share one path."""
    if not torch.isfinite(x).all():
        raise ValueError("float tensor contains NaN or infinity")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("float tensor values must lie in [0, 1]")
    return (x * 255.0).round_().to(torch.uint8)


@dataclass
class ChannelStats:
    """Per-channel mean/std of [0, 1] pixels, accumulated in chunks to bound memory."""

    count: int = 0
    total: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    total_sq: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def update(self, batch: torch.Tensor) -> None:
        x = batch.double().div(255.0) if batch.dtype == torch.uint8 else batch.double()
        self.count += x.shape[0] * x.shape[2] * x.shape[3]
        s = x.sum(dim=(0, 2, 3))
        sq = (x * x).sum(dim=(0, 2, 3))
        for c in range(3):
            self.total[c] += float(s[c])
            self.total_sq[c] += float(sq[c])

    def mean(self) -> tuple[float, float, float]:
        m = [t / max(self.count, 1) for t in self.total]
        return (m[0], m[1], m[2])

    def std(self) -> tuple[float, float, float]:
        m = self.mean()
        v = [max(sq / max(self.count, 1) - mu * mu, 1e-12) ** 0.5 for sq, mu in zip(self.total_sq, m, strict=True)]
        return (v[0], v[1], v[2])


def channel_stats(images: torch.Tensor, cfg: PreprocessConfig | None = None, chunk: int = 4096) -> ChannelStats:
    """Stats of raw uint8 images, or of `prepare`d ones when a config is given."""
    stats = ChannelStats()
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        stats.update(prepare(part, cfg) if cfg is not None else part)
    return stats
