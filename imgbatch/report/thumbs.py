"""Thumbnails as JPEG data URIs, decoded by the workers' own `open_image` (same EXIF orientation)."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from imgbatch.core.files import TransientFileError, inside_roots
from imgbatch.core.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, PreprocessSpec, open_image

THUMB_SIDE = 128
JPEG_QUALITY = 70


@dataclass(frozen=True)
class Thumb:
    """A data URI, or why there is none ("missing" when the file has gone since the job ran)."""

    uri: str | None
    problem: str | None = None

    @property
    def missing(self) -> bool:
        return self.problem == "missing"


def make_thumb(
    path: str, roots: list[bytes], side: int = THUMB_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Thumb:
    """A thumbnail of `path`, read as workers read (a regular file, bounded, never blocking) and only
    from inside the job's directories `roots` (resolved, as bytes)."""
    if not os.path.lexists(path):
        return Thumb(None, "missing")
    if not inside_roots(path, roots):
        return Thumb(None, "outside the job's directories")
    # resize=crop=side lets libjpeg decode large JPEGs at a fraction of their size (draft mode).
    spec = PreprocessSpec(resize=side, crop=side)
    try:
        img = open_image(path, spec, max_pixels)
    except (ImageDecodeError, TransientFileError) as exc:
        return Thumb(None, "missing" if str(exc) == "file not found" else str(exc))
    except MemoryError:
        return Thumb(None, "out of memory while decoding")
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return Thumb("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))


def make_thumbs(
    files: Iterable[tuple[str, str]], roots: list[bytes], side: int = THUMB_SIDE, threads: int | None = None
) -> dict[str, Thumb]:
    """{path: thumbnail} for (path, file to open) pairs, each distinct path decoded once, on a few
    threads (Pillow releases the GIL while decoding); only files inside `roots` are opened."""
    real_roots = [os.path.realpath(r) for r in roots]
    unique = dict(files)
    if not unique:
        return {}
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        thumbs = pool.map(lambda f: make_thumb(f, real_roots, side), unique.values())
        return dict(zip(unique, thumbs, strict=True))
