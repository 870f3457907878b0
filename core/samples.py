"""Real photos, made offline: demo input, calibration, evaluation and test sets.

Nothing is downloaded. Two sources: the photos scikit-image ships in its wheel (cat, coffee, ...; the
demo and test sets), and 32 everyday photos kept in ``core/photos`` (their origin and licences
in ``photos/SOURCES.md``), which give calibration and evaluation a spread of ImageNet subjects.
Variants are crops, flips, rescales and JPEG re-encodings of the originals, so they stay natural photos.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def _photos() -> dict[str, Callable[[], np.ndarray]]:
    try:
        from skimage import data
    except ImportError as exc:  # scikit-image is in the `export` extra
        from imgbatch.core.errors import UserError

        raise UserError("sample photos need scikit-image: pip install 'imgbatch[export]'") from exc
    return {
        "cat": data.chelsea,
        "coffee": data.coffee,
        "astronaut": data.astronaut,
        "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],  # type: ignore[no-untyped-call]
        "hubble": data.hubble_deep_field,
        "cells": data.immunohistochemistry,
        "retina": data.retina,
    }


# The ImageNet classes a good classifier gives the unambiguous photos; tests and the demo check these.
EXPECTED_CLASSES: dict[str, set[int]] = {
    "cat": {281, 282, 283, 284, 285, 287},  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
    "coffee": {504, 967, 968},  # coffee mug, espresso, cup
}


PHOTO_DIR = Path(__file__).parent / "photos"
# The natural colour photos of scikit-image (its microscope, telescope and fundus images are not).
SKIMAGE_NATURAL = ["cat", "coffee", "astronaut", "rocket", "motorcycle"]


def photo_names() -> list[str]:
    """scikit-image's photos: the demo input and the base of the test and benchmark sets."""
    return list(_photos())


def bundled_photo_names() -> list[str]:
    return sorted(p.stem for p in PHOTO_DIR.glob("*.jpg"))


def natural_photo_names() -> list[str]:
    """Every natural photo: scikit-image's five and the bundled ones (evaluation, calibration)."""
    return SKIMAGE_NATURAL + bundled_photo_names()


def load_photo(name: str) -> Image.Image:
    bundled = PHOTO_DIR / f"{name}.jpg"
    if bundled.is_file():
        with Image.open(bundled) as img:
            return img.convert("RGB")
    return Image.fromarray(_photos()[name]()).convert("RGB")


def write_photos(directory: Path, names: list[str] | None = None, quality: int = 92) -> list[Path]:
    """Write the bundled photos as JPEG files ``<name>.jpg``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or photo_names():
        path = directory / f"{name}.jpg"
        load_photo(name).save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def make_variants(
    directory: Path,
    count: int,
    seed: int = 0,
    names: list[str] | None = None,
    min_side: int = 160,
    max_side: int = 1024,
) -> list[Path]:
    """Write ``count`` JPEG variants (crop, flip, rescale, quality) of the bundled photos."""
    rng = random.Random(seed)
    originals = {name: load_photo(name) for name in names or photo_names()}
    keys = sorted(originals)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = keys[i % len(keys)]
        img = originals[name]
        w, h = img.size
        frac = rng.uniform(0.6, 1.0)  # keep most of the subject in the crop
        cw, ch = int(w * frac), int(h * frac)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = img.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            out = ImageOps.mirror(out)
        long_side = rng.randint(min_side, max_side)
        ratio = long_side / max(out.size)
        out = out.resize(
            (max(1, round(out.width * ratio)), max(1, round(out.height * ratio))), Image.Resampling.BICUBIC
        )
        path = directory / f"{name}_{i:06d}.jpg"
        out.save(path, "JPEG", quality=rng.randint(75, 95))
        paths.append(path)
    return paths
