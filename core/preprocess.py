"""The one preprocessing definition: calibration, evaluation and workers all call ``load_tensor`` /
``decode_tensor``.

The parameters travel inside the ONNX file (``PreprocessSpec`` as JSON in ``metadata_props``), so a
worker preprocesses exactly as the model was calibrated, whatever model it is given.

The reference (``reference_tensor``) is torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` on a
Pillow image: full decode, EXIF orientation, RGB, shorter side resized to ``resize`` with Pillow's
antialiased filter, centre crop with torchvision's rounding, then (x/255 - mean) / std.

Two decoders implement it (``IMGBATCH_DECODE``); which one ran is an implementation choice, not a
model property, so it is not part of ``PreprocessSpec``:

- ``exact`` (default): tensors bit-identical to the reference for every image whose shorter side is
  under 4x ``resize`` (tests hold them with ``np.array_equal``). Plain JPEGs are decoded in full by
  libjpeg-turbo (``simplejpeg``, the same pixels as Pillow's decoder, faster), then resized and
  cropped by Pillow exactly as the reference does. Larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale
  in the DCT domain, never below 2x ``resize`` (their full decode would dominate the cost): close
  to the reference, not identical (measured in tests/test_preprocess.py and docs/quantization.md).
- ``fast``: DCT-scaled decode down to ``resize`` and OpenCV's resize with emulated antialiasing:
  about 1 level of 255 from the reference on average (mixed photo set: 4.1 instead of 5.8 ms/image).

Both refuse oversized images before decoding and send anything unusual (PNG, grayscale or CMYK
JPEGs, damaged files, an EXIF block they cannot read) through Pillow, so error reasons are the same.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from imgbatch.core.files import DEFAULT_MAX_FILE_BYTES, ImageDecodeError, read_image_file

try:  # the fast JPEG path; without these two wheels every file goes through Pillow
    import cv2
    import simplejpeg

    # One OpenCV thread: workers already run one process per core, a pool per process would
    # oversubscribe the CPU.
    cv2.setNumThreads(1)
    HAVE_FAST_JPEG = True
except ImportError:  # pragma: no cover - both are declared dependencies
    HAVE_FAST_JPEG = False

# Pillow's own bomb check only raises at 2x its limit and warns below; we refuse explicitly
# before any pixel is decoded, with a reason that lands in the result row.
DEFAULT_MAX_PIXELS = 80_000_000
# The resize scales the shorter side to the model's size and keeps the aspect ratio, so its output
# grows with the ratio: a 138-byte 20000x1 PNG became a 5120000x256 image (seconds and gigabytes in
# Pillow's C resize, which no alarm interrupts). No camera or panorama reaches 32:1; at that ratio
# the resized image is at most 32 x resize^2 pixels (2.1 M at 256), bounded by the model, not the file.
MAX_ASPECT_RATIO = 32


Decoder = Literal["exact", "fast"]
DECODERS: tuple[Decoder, ...] = ("exact", "fast")

__all__ = [
    "DECODERS",
    "DEFAULT_MAX_FILE_BYTES",
    "Decoder",
    "ImageDecodeError",
    "PreprocessSpec",
    "decode_tensor",
    "load_reference_tensor",
    "load_tensor",
    "open_image",
    "reference_tensor",
]


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


def draft_factor(width: int, height: int, spec: PreprocessSpec) -> int:
    """The JPEG DCT scaling (1, 2, 4 or 8) of the fast decoder, in both its libraries: the largest
    that keeps the shorter side at least ``resize`` (Pillow's ``draft`` rule)."""
    return dct_factor(width, height, spec.resize)


def exact_factor(width: int, height: int, spec: PreprocessSpec) -> int:
    """The DCT scaling of the exact decoder: the decoded image keeps at least twice the shorter side
    the model needs, so images under 4x ``resize`` are decoded in full (and are bit-exact)."""
    return dct_factor(width, height, 2 * spec.resize)


def dct_factor(width: int, height: int, short_side: int) -> int:
    """The largest of 8, 4, 2, 1 that Pillow's ``draft`` picks for a request of ``short_side`` on the
    shorter side; 1 unless the image is more than twice as large as the request."""
    scale = short_side / min(width, height)
    if scale >= 0.5:
        return 1
    want_w, want_h = math.ceil(width * scale), math.ceil(height * scale)
    fits = min(width // want_w, height // want_h)
    return next(f for f in (8, 4, 2, 1) if fits >= f)


def open_image(
    path: str | Path,
    spec: PreprocessSpec,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Image.Image:
    """Decode a file into an upright RGB image no smaller than the spec needs (the Pillow decoder).

    Raises ImageDecodeError with a short reason for anything that is not a usable image.
    """
    return decode_image(read_image_file(path, max_bytes), spec, max_pixels, draft_short=spec.resize)


def decode_image(
    data: bytes,
    spec: PreprocessSpec,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    draft_short: int | None,
) -> Image.Image:
    """`open_image` of a file already read into memory.

    ``draft_short``: JPEGs more than twice this size on their shorter side are decoded at 1/2, 1/4
    or 1/8 scale, never below it; None: a full decode.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels: {exc}") from exc
    except OSError as exc:
        raise ImageDecodeError(f"not a decodable image: {_pillow_reason(exc)}") from exc
    try:
        pixels = img.width * img.height
        if pixels > max_pixels:
            raise ImageDecodeError(
                f"too many pixels: {img.width}x{img.height} exceeds the limit of {max_pixels}"
            )
        check_aspect_ratio(img.width, img.height)
        if img.format == "JPEG" and draft_short is not None:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger than needed:
            # most of the decode cost of multi-megapixel photos disappears, and the result is still
            # at least `draft_short` on its shorter side.
            scale = draft_short / min(img.width, img.height)
            if scale < 0.5:  # Pillow picks the factor that `dct_factor` computes for simplejpeg
                img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()
        # In place: without it, exif_transpose returns a full copy of every image it does not rotate
        # (a 1200x1200 PNG: 5.8 MB more at a worker's peak RSS, for nothing).
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {_pillow_reason(exc)}") from exc


# Pillow names the in-memory buffer it was given ("cannot identify image file <_io.BytesIO object at
# 0x7f...>"): an address, not a reason.
_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>")


def _pillow_reason(exc: BaseException) -> str:
    return _BUFFER_REPR.sub("", str(exc)).strip() or type(exc).__name__


def extreme_aspect(width: int, height: int) -> bool:
    """Whether resizing this image for the model would cost more than the model needs."""
    short, long = sorted((width, height))
    return short < 1 or long > MAX_ASPECT_RATIO * short


def check_aspect_ratio(width: int, height: int) -> None:
    """Refuse, from the header alone, an image whose resize would cost more than the model needs."""
    if extreme_aspect(width, height):
        raise ImageDecodeError(
            f"extreme aspect ratio: {width}x{height} is over {MAX_ASPECT_RATIO}:1 "
            "(resizing it for the model would cost far more than the image holds)"
        )


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
    return _normalize(np.asarray(out), spec)


def _normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (crop, crop, 3) -> normalized float32 (3, crop, crop): (x/255 - mean) / std.

    Transposed while still uint8 and scaled in place: about 10x faster than normalizing HWC floats.
    """
    scale, bias = _norm_constants(spec.mean, spec.std)
    out = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    out *= scale
    out -= bias
    return out


@functools.lru_cache(maxsize=8)
def _norm_constants(
    mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
    bias = np.asarray(mean, dtype=np.float32) * 255.0 * scale
    return scale.reshape(3, 1, 1), bias.reshape(3, 1, 1)


def load_tensor(
    path: str | Path,
    spec: PreprocessSpec,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    decode: Decoder = "exact",
) -> np.ndarray:
    """File -> model input row. The single path used by calibration, evaluation and workers."""
    return decode_tensor(read_image_file(path, max_bytes), spec, max_pixels, decode)


def decode_tensor(
    data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS, decode: Decoder = "exact"
) -> np.ndarray:
    """File contents -> model input row with the chosen decoder (see the module's docstring)."""
    if decode == "exact":
        img = _decode_jpeg_exact(data, spec, max_pixels) if HAVE_FAST_JPEG else None
        if img is None:
            img = decode_image(data, spec, max_pixels, draft_short=2 * spec.resize)
        return reference_crop(img, spec)
    if decode != "fast":
        raise ValueError(f"unknown decoder {decode!r}; known: {', '.join(DECODERS)}")
    if HAVE_FAST_JPEG:
        tensor = _decode_jpeg_fast(data, spec, max_pixels)
        if tensor is not None:
            return tensor
    return to_tensor(decode_image(data, spec, max_pixels, draft_short=spec.resize), spec)


def reference_tensor(data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The definition the decoders are held to: Pillow alone, full decode whatever the size."""
    return reference_crop(decode_image(data, spec, max_pixels, draft_short=None), spec)


def load_reference_tensor(
    path: str | Path, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """`reference_tensor` of a file."""
    return reference_tensor(read_image_file(path), spec, max_pixels)


def reference_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Upright RGB image -> model input, as torchvision's ``Resize(resize)``, ``CenterCrop(crop)``,
    ``ToTensor``, ``Normalize`` do on a Pillow image (the same sizes, rounding and Pillow filter)."""
    w, h = img.size
    size = (spec.resize, int(spec.resize * h / w)) if w <= h else (int(spec.resize * w / h), spec.resize)
    # The whole image is resized, then cropped: Pillow's resize with a crop box computes its filter
    # positions differently in floating point, which moves a few pixels by one level.
    resized = img.resize(size, _INTERPOLATION[spec.interpolation])
    left = int(round((size[0] - spec.crop) / 2.0))
    top = int(round((size[1] - spec.crop) / 2.0))
    out = resized.crop((left, top, left + spec.crop, top + spec.crop))
    return _normalize(np.asarray(out), spec)


# ---------------------------------------------------------------------------- exact JPEG path
_JPEG_SOI = b"\xff\xd8"
# Pillow's transpose for each EXIF orientation, as ImageOps.exif_transpose applies it.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode_jpeg_exact(data: bytes, spec: PreprocessSpec, max_pixels: int) -> Image.Image | None:
    """A plain YCbCr/RGB JPEG decoded by libjpeg-turbo into an upright RGB Pillow image, or None: use
    Pillow. Full decode (the same pixels as Pillow's) unless the image is 4x larger than needed.

    The orientation is applied before the resize, as the reference does: Pillow's resize rounds
    between its horizontal and vertical passes, so rotating afterwards can differ by one level.
    """
    header = _plain_jpeg_header(data, max_pixels)
    if header is None:
        return None
    width, height, orientation = header
    factor = exact_factor(width, height, spec)
    rgb = _simplejpeg_decode(data, width, height, factor)
    if rgb is None:
        return None
    img = Image.fromarray(rgb)
    method = _EXIF_TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


def _plain_jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a YCbCr/RGB JPEG within the pixel limit, else None."""
    if data[:2] != _JPEG_SOI:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "RGB") or width * height > max_pixels or min(width, height) < 1:
        return None
    if extreme_aspect(width, height):
        return None  # Pillow's path gives the reason
    orientation = exif_orientation(data)
    if orientation is None:
        return None
    return width, height, orientation


def _simplejpeg_decode(data: bytes, width: int, height: int, factor: int) -> np.ndarray | None:
    try:
        rgb: np.ndarray = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=math.ceil(height / factor),
            min_width=math.ceil(width / factor),
            min_factor=factor,
        )
    except ValueError:
        return None  # truncated or corrupt: Pillow gives the reason
    return rgb


# ---------------------------------------------------------------------------- fast JPEG path
_CV2_INTERPOLATION = {"bilinear": 1, "bicubic": 2, "nearest": 0}  # cv2.INTER_LINEAR, _CUBIC, _NEAREST


def _load_jpeg_fast(path: str | Path, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | None:
    """`_decode_jpeg_fast` of a file (tests hold it to the Pillow route of the fast decoder)."""
    return _decode_jpeg_fast(read_image_file(path), spec, max_pixels)


def _decode_jpeg_fast(data: bytes, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | None:
    """The tensor of a plain YCbCr/RGB JPEG via libjpeg-turbo + OpenCV, or None: use Pillow.

    Returns None for anything unusual (not a JPEG, grayscale/CMYK, over the pixel limit, damaged,
    an EXIF block it cannot read), so that Pillow decides and the error reasons stay the same.
    """
    header = _plain_jpeg_header(data, max_pixels)
    if header is None:
        return None
    width, height, orientation = header
    rgb = _simplejpeg_decode(data, width, height, draft_factor(width, height, spec))
    if rgb is None:
        return None
    return _normalize(_orient(_resize_crop(rgb, spec), orientation), spec)


def _resize_crop(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize the shorter side to ``resize`` and center-crop ``crop`` with OpenCV, as ``to_tensor`` does
    with Pillow: the same fractional crop box in source pixels, mapped exactly (sub-pixel) by an affine
    bilinear warp. When shrinking by r > 1, Pillow's filter widens to r source pixels (antialiasing);
    here k x k blocks are averaged first (k = floor(r), area filter) and a 3-tap blur makes up the
    rest of the filter's variance, so the result is about as smooth as Pillow's: mean difference
    under 1 level of 255 on photos, where a plain bilinear warp differs by about 2."""
    h, w = rgb.shape[:2]
    r = min(w, h) / spec.resize  # source pixels per output pixel
    box = spec.crop * r
    left, top = (w - box) / 2, (h - box) / 2
    k = max(1, int(r))
    x0 = y0 = 0
    src = rgb
    if k > 1:
        x0, y0 = max(0, math.floor(left)), max(0, math.floor(top))
        nx = (min(w, math.ceil(left + box)) - x0) // k
        ny = (min(h, math.ceil(top + box)) - y0) // k
        src = cv2.resize(rgb[y0 : y0 + ny * k, x0 : x0 + nx * k], (nx, ny), interpolation=cv2.INTER_AREA)
    if r > 1.0:
        # Variances (in k-shrunk pixels): Pillow's triangle of width r/k is (r/k)^2/6; the bilinear
        # warp gives 1/6 and the k-box (k^2-1)/(12 k^2); the kernel [a, 1-2a, a] adds 2a.
        rest = (r / k) ** 2 / 6 - 1 / 6 - (k * k - 1) / (12 * k * k)
        a = min(max(rest / 2, 0.0), 1 / 3)
        if a > 0.01:
            kernel = np.array([a, 1 - 2 * a, a], dtype=np.float32)
            src = cv2.sepFilter2D(src, -1, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    # Output pixel i has its center at source coordinate left + r * (i + 0.5); in the k-shrunk
    # image's pixel coordinates that is ((left - x0) + r * (i + 0.5)) / k - 0.5.
    matrix = np.array(
        [
            [r / k, 0.0, (left - x0 + 0.5 * r) / k - 0.5],
            [0.0, r / k, (top - y0 + 0.5 * r) / k - 0.5],
        ]
    )
    flags = _CV2_INTERPOLATION[spec.interpolation] | cv2.WARP_INVERSE_MAP
    out: np.ndarray = cv2.warpAffine(
        src, matrix, (spec.crop, spec.crop), flags=flags, borderMode=cv2.BORDER_REPLICATE
    )
    return out


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, C) array, as ``ImageOps.exif_transpose`` does.

    Applied after the square center crop, with which every orientation commutes.
    """
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(img, k=-1)
    if orientation == 7:
        return img[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(img, k=1)
    return img


def exif_orientation(data: bytes) -> int | None:
    """The orientation (1-8) Pillow's ``exif_transpose`` applies to JPEG bytes, 1 when there is none,
    None when unsure.

    Reads only the marker segments before the image data: no pixel is decoded. Pillow takes the first
    EXIF segment's tag and, only when that is absent, an XMP ``tiff:Orientation``; an XMP packet that
    names an orientation is left to Pillow (None).

    Why not Pillow's own reading (``Image.open(...).getexif()``): on 300 imagenet-dev photos it cost
    83.6 us a photo against 3.8 us here (same answer on 300/300), about 2 % of an exact decode, which
    is most of the pipeline's overhead budget (measured 2026-12-07, machine shared with a test run).
    """
    pos, end = 2, len(data)
    orientation: int | None = 0  # 0: no EXIF orientation tag (yet)
    seen_exif = xmp_orientation = False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the metadata is behind us
            if orientation == 0:
                return None if xmp_orientation else 1
            return orientation
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and not seen_exif:
            seen_exif = True
            orientation = _tiff_orientation(segment[6:])
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/"):
            xmp_orientation = xmp_orientation or b"Orientation" in segment
        pos += 2 + length
    return None


def _tiff_orientation(tiff: bytes) -> int | None:
    """The orientation tag of an EXIF block: 1-8 (any other value: 1, as Pillow), 0 when absent."""
    order = tiff[:2]
    if order not in (b"II", b"MM"):
        return None
    endian: Literal["little", "big"] = "little" if order == b"II" else "big"
    try:
        ifd = int.from_bytes(tiff[4:8], endian)
        count = int.from_bytes(tiff[ifd : ifd + 2], endian)
        if ifd < 8 or ifd + 2 + 12 * count > len(tiff):
            return None
        for i in range(count):
            entry = ifd + 2 + 12 * i
            if int.from_bytes(tiff[entry : entry + 2], endian) == 0x0112:
                value = int.from_bytes(tiff[entry + 8 : entry + 10], endian)
                return value if 1 <= value <= 8 else 1
    except (IndexError, ValueError):
        return None
    return 0
