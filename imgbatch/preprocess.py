"""The one preprocessing definition: calibration, validation and workers all call these functions.

The parameters travel inside the ONNX file (``PreprocessSpec`` as JSON in ``metadata_props``), so a
worker preprocesses exactly as the model was calibrated, whatever model it is given.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# Pillow's own bomb check only raises at 2x its limit and warns below; we refuse explicitly
# before any pixel is decoded, with a reason that lands in the result row.
DEFAULT_MAX_PIXELS = 80_000_000


class ImageDecodeError(Exception):
    """This file cannot become model input; the message is the reason stored with the image."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Resize the shorter side to ``resize``, center-crop ``crop`` x ``crop``, then (x/255 - mean) / std."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.498, 0.498, 0.498)
    std: tuple[float, float, float] = (0.502, 0.502, 0.502)
    interpolation: str = "bilinear"
    layout: str = "NCHW"
    color: str = "RGB"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ValueError(
                f"PreprocessSpec: need 0 < crop <= resize, got crop={self.crop} resize={self.resize}"
            )
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"PreprocessSpec.interpolation: unknown {self.interpolation!r}")
        if self.layout != "NCHW" or self.color != "RGB":
            raise ValueError("PreprocessSpec: only NCHW RGB input is supported")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("PreprocessSpec: mean and std need three values, std > 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        data = json.loads(text)
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(**data)


_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def open_image(path: str | Path, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file into an upright RGB image no smaller than the spec needs.

    Raises ImageDecodeError with a short reason for anything that is not a usable image.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError("not a regular file")  # a FIFO or device would block the worker
        if st.st_size == 0:
            raise ImageDecodeError("empty file")
        img = Image.open(path)
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except PermissionError as exc:
        raise ImageDecodeError("permission denied") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels: {exc}") from exc
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc
    try:
        pixels = img.width * img.height
        if pixels > max_pixels:
            raise ImageDecodeError(
                f"too many pixels: {img.width}x{img.height} exceeds the limit of {max_pixels}"
            )
        if img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger than needed:
            # most of the decode cost of multi-megapixel photos disappears, and the result is still
            # at least `resize` on its shorter side.
            scale = spec.resize / min(img.width, img.height)
            if scale < 0.5:
                img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()
        upright: Image.Image = ImageOps.exif_transpose(img) or img
        return _to_rgb(upright)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float grayscale: Pillow's convert("RGB") clips instead of scaling.
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as an image viewer shows them, not black.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def to_tensor(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image -> float32 array (3, crop, crop): resize shorter side, center crop, normalize."""
    w, h = img.size
    scale = spec.resize / min(w, h)
    # Crop box in source coordinates, so resize and crop are one Pillow call on a smaller region.
    box_w, box_h = spec.crop / scale, spec.crop / scale
    left, top = (w - box_w) / 2, (h - box_h) / 2
    out = img.resize(
        (spec.crop, spec.crop),
        _INTERPOLATION[spec.interpolation],
        box=(left, top, left + box_w, top + box_h),
    )
    arr = np.asarray(out, dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    return np.ascontiguousarray(((arr - mean) * inv_std).transpose(2, 0, 1))


def load_tensor(path: str | Path, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """File -> model input row. The single path used by calibration, validation and workers."""
    return to_tensor(open_image(path, spec, max_pixels), spec)
