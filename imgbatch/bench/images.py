"""A realistic benchmark set, made offline from real photos (scikit-image's bundled samples).

Mixed like a real photo collection: mostly web/ImageNet-sized JPEGs, a share of medium ones, and
multi-megapixel camera JPEGs (3 to 12 MP, baseline, some with an EXIF rotation as phones write
them), some progressive web JPEGs, plus a few PNGs. Every file is a different crop, flip, rescale and
quality of a real photo; the large ones get a fixed film-grain texture so they compress (and decode)
like camera output rather than like a smooth upscale.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from imgbatch.bench.plan import Say

# (share, name, long-side range in pixels, JPEG quality range)
SIZE_CLASSES: tuple[tuple[float, str, tuple[int, int], tuple[int, int]], ...] = (
    (0.60, "web", (320, 640), (75, 92)),
    (0.28, "medium", (800, 1600), (80, 92)),
    (0.12, "camera", (2400, 4032), (85, 95)),
)
PNG_SHARE = 0.03
ROTATED_SHARE_OF_CAMERA = 0.3
PROGRESSIVE_SHARE = 0.1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class _Plan:
    index: int
    photo: str
    size_class: str
    long_side: int
    quality: int
    crop: tuple[float, float, float]  # fraction kept, left and top as fractions of the slack
    mirror: bool
    png: bool
    rotated: bool
    progressive: bool
    aspect: float  # camera photos: 4:3 or 3:2 crops


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def make_bench_set(directory: Path, count: int, seed: int = 0, processes: int | None = None) -> list[Path]:
    """Write ``count`` photos into ``directory`` (``bench_000000.jpg`` ...); returns their paths."""
    from imgbatch.core.samples import photo_names

    rng = random.Random(seed)
    names = sorted(photo_names())
    plans = [_plan(i, names[i % len(names)], rng) for i in range(count)]
    directory.mkdir(parents=True, exist_ok=True)
    workers = max(1, processes or len(os.sched_getaffinity(0)))
    if workers == 1 or count < 50:
        return [_write(directory, plan) for plan in plans]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_write, [directory] * len(plans), plans, chunksize=16))


def job_images(directory: Path, count: int, work: Path, say: Say) -> tuple[list[Path], Path]:
    """The ``count`` images of every bench job, and the directory the jobs cover: ``directory`` (a bench
    set is written there if it is missing or empty), or links to its first ``count`` files under ``work``."""
    found = list_images(directory) if directory.is_dir() else []
    if not found:
        say(f"writing a benchmark set of {count} photos to {directory} ...")
        found = make_bench_set(directory, count)
    if len(found) > count:  # a job covers a whole directory: link the first N into the work dir
        job_dir = work / "images"
        job_dir.mkdir(exist_ok=True)
        for i, src in enumerate(found[:count]):
            _link_or_copy(src, job_dir / f"{i:06d}_{src.name}")
        return list_images(job_dir), job_dir
    if len(found) < count:
        say(f"note: {directory} has {len(found)} images, fewer than --images {count}")
    return found, directory.resolve()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def describe(paths: Iterable[Path]) -> dict[str, float]:
    """Counts and sizes of a set, read from the headers only (no decoding)."""
    sizes, megapixels, big = [], [], 0
    for path in paths:
        with Image.open(path) as img:
            w, h = img.size
        sizes.append(path.stat().st_size)
        megapixels.append(w * h / 1e6)
        big += w * h >= 3_000_000
    n = len(sizes)
    return {
        "images": n,
        "mean_megapixels": float(np.mean(megapixels)) if n else 0.0,
        "max_megapixels": float(np.max(megapixels)) if n else 0.0,
        "multi_megapixel": big,
        "mean_kb": float(np.mean(sizes) / 1e3) if n else 0.0,
        "total_mb": float(np.sum(sizes) / 1e6) if n else 0.0,
    }


def _plan(index: int, photo: str, rng: random.Random) -> _Plan:
    pick, acc = rng.random(), 0.0
    chosen = SIZE_CLASSES[-1]
    for size_class in SIZE_CLASSES:
        acc += size_class[0]
        if pick < acc:
            chosen = size_class
            break
    _, name, (lo, hi), (qlo, qhi) = chosen
    camera = name == "camera"
    return _Plan(
        index=index,
        photo=photo,
        size_class=name,
        long_side=rng.randint(lo, hi),
        quality=rng.randint(qlo, qhi),
        crop=(rng.uniform(0.6, 1.0), rng.random(), rng.random()),
        mirror=rng.random() < 0.5,
        png=not camera and rng.random() < PNG_SHARE,
        rotated=camera and rng.random() < ROTATED_SHARE_OF_CAMERA,
        # Web images are often progressive; camera JPEGs are baseline.
        progressive=not camera and rng.random() < PROGRESSIVE_SHARE,
        aspect=rng.choice((4 / 3, 3 / 2)) if camera else 0.0,
    )


_PHOTOS: dict[str, np.ndarray] = {}
_GRAIN: np.ndarray | None = None


def _photo(name: str) -> np.ndarray:
    if name not in _PHOTOS:
        from imgbatch.core.samples import load_photo

        _PHOTOS[name] = np.asarray(load_photo(name))
    return _PHOTOS[name]


def _grain() -> np.ndarray:
    global _GRAIN
    if _GRAIN is None:
        _GRAIN = np.random.default_rng(1).normal(0.0, 4.0, (509, 509, 3)).astype(np.int16)
    return _GRAIN


def _write(directory: Path, plan: _Plan) -> Path:
    import cv2

    src = _photo(plan.photo)
    h, w = src.shape[:2]
    frac, fx, fy = plan.crop
    cw, ch = max(16, int(w * frac)), max(16, int(h * frac))
    if plan.aspect:  # camera frame: 4:3 or 3:2 landscape
        ch = min(ch, int(cw / plan.aspect))
        cw = min(cw, int(ch * plan.aspect))
    left, top = int((w - cw) * fx), int((h - ch) * fy)
    img = src[top : top + ch, left : left + cw]
    if plan.mirror:
        img = img[:, ::-1]
    ratio = plan.long_side / max(img.shape[:2])
    size = (max(1, round(img.shape[1] * ratio)), max(1, round(img.shape[0] * ratio)))
    interpolation = cv2.INTER_CUBIC if ratio > 1 else cv2.INTER_AREA
    img = cv2.resize(np.ascontiguousarray(img), size, interpolation=interpolation)
    if ratio > 2:  # an upscale is smoother than a camera photo: add sensor-like grain
        grain = _grain()
        reps = (img.shape[0] // grain.shape[0] + 1, img.shape[1] // grain.shape[1] + 1, 1)
        tiled = np.tile(grain, reps)[: img.shape[0], : img.shape[1]]
        img = np.clip(img.astype(np.int16) + tiled, 0, 255).astype(np.uint8)
    stem = f"bench_{plan.index:06d}"
    if plan.png:
        path = directory / f"{stem}.png"
        Image.fromarray(img).save(path, "PNG", compress_level=1)
        return path
    path = directory / f"{stem}.jpg"
    kwargs: dict[str, object] = {"quality": plan.quality, "progressive": plan.progressive}
    if plan.rotated:
        # Stored sideways with orientation 6, as a phone held upright writes it; shown upright.
        img = np.ascontiguousarray(np.rot90(img, k=1))
        exif = Image.Exif()
        exif[0x0112] = 6
        kwargs["exif"] = exif
    Image.fromarray(img).save(path, "JPEG", **kwargs)  # type: ignore[arg-type]
    return path
