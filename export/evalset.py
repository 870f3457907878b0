"""Calibration and evaluation photos, made offline, and user-given image directories with labels.

Default sets are JPEG variants (crop, flip, rescale, quality) of real photos that ship with the
package (``imgbatch.core.samples``), so nothing is downloaded:

* calibration: ``calib_count`` variants of all photos (scikit-image's and the 32 bundled ones),
  seed ``calib_seed`` (0);
* evaluation ("natural photos"): ``eval_count`` variants of the 37 natural photos (scikit-image's
  cat, coffee, astronaut, rocket, motorcycle and the bundled ones) with a different seed
  (``EVAL_SEED``) and a longer side of at least 320 px (a photo, not an upscaled thumbnail).
  scikit-image's microscope / telescope / fundus samples are not natural photos and stay out of it;
* search (``--auto``): as many variants of the same natural photos, another seed (``SEARCH_SEED``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from imgbatch.core.errors import UserError
from imgbatch.core.samples import bundled_photo_names, make_variants, natural_photo_names, photo_names

NATURAL_PHOTOS = natural_photo_names()
EVAL_SEED = 1001
# ``--auto`` ranks its candidates on other variants of the same photos (export.auto): the gate's
# figure then comes from photos the search never saw.
SEARCH_SEED = 2002
EVAL_MIN_SIDE = 320
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def natural_eval_set(directory: Path, count: int, seed: int = EVAL_SEED) -> list[Path]:
    return make_variants(directory, count, seed=seed, names=NATURAL_PHOTOS, min_side=EVAL_MIN_SIDE)


def search_set(directory: Path, count: int) -> list[Path]:
    return natural_eval_set(directory, count, seed=SEARCH_SEED)


def calibration_set(directory: Path, count: int, seed: int) -> list[Path]:
    return make_variants(directory, count, seed=seed, names=photo_names() + bundled_photo_names())


def list_images(directory: Path, what: str) -> list[Path]:
    """Image files under ``directory`` (recursively, sorted); a UserError if there are none."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UserError(f"{what} directory not found: {directory}")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"{what} directory {directory} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


@dataclass(frozen=True)
class LabelledSet:
    paths: list[Path]
    labels: list[int] | None  # class index per path, or None when no labels were given
    source: str

    def describe(self) -> str:
        tag = "labelled" if self.labels is not None else "unlabelled"
        return f"{len(self.paths)} {tag} images ({self.source})"


def _class_index(value: str, class_names: list[str]) -> int | None:
    text = value.strip()
    if text.isdigit():
        index = int(text)
        return index if index < len(class_names) else None
    lowered = {name.lower(): i for i, name in enumerate(class_names)}
    return lowered.get(text.replace("_", " ").lower(), lowered.get(text.lower()))


def load_eval_dir(directory: Path, labels_csv: Path | None, class_names: list[str]) -> LabelledSet:
    """Images of ``directory`` with labels from ``labels_csv`` (``filename,class_index``) or subfolders.

    Subfolder labels apply when every image sits in a subfolder named after a class (index or name).
    """
    directory = Path(directory).expanduser()
    paths = list_images(directory, "evaluation")
    if labels_csv is not None:
        return LabelledSet(*_labels_from_csv(directory, paths, Path(labels_csv), class_names), str(directory))
    parents = {p.parent for p in paths}
    if directory not in parents:
        indices = [_class_index(p.parent.name, class_names) for p in paths]
        bad = sorted({p.parent.name for p, i in zip(paths, indices, strict=True) if i is None})
        if bad:
            raise UserError(
                f"evaluation subfolder(s) {', '.join(bad[:3])} of {directory} name no class of the model "
                f"(use a class index 0-{len(class_names) - 1} or a class name such as {class_names[0]!r})"
            )
        return LabelledSet(
            paths, [int(i) for i in indices if i is not None], f"{directory}, labels from subfolders"
        )
    return LabelledSet(paths, None, str(directory))


def _labels_from_csv(
    directory: Path, paths: list[Path], labels_csv: Path, class_names: list[str]
) -> tuple[list[Path], list[int]]:
    try:
        with open(labels_csv, newline="") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except OSError as exc:
        raise UserError(f"cannot read labels {labels_csv}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"labels {labels_csv} is not a CSV file: {exc}") from exc
    if rows and rows[0][0].strip().lower() in ("filename", "file", "path"):
        rows = rows[1:]
    by_name = {str(p.relative_to(directory)): p for p in paths}
    by_name.update({p.name: p for p in paths if p.name not in by_name})
    labelled: dict[Path, int] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise UserError(f"labels {labels_csv} row {number}: expected filename,class_index, got {row!r}")
        name, value = row[0].strip(), row[1]
        if name not in by_name:
            raise UserError(f"labels {labels_csv} row {number}: no image {name!r} in {directory}")
        index = _class_index(value, class_names)
        if index is None:
            raise UserError(
                f"labels {labels_csv} row {number}: {value.strip()!r} is not a class of the model "
                f"(0-{len(class_names) - 1} or a class name)"
            )
        labelled[by_name[name]] = index
    if not labelled:
        raise UserError(f"labels {labels_csv} has no rows")
    ordered = sorted(labelled)
    return ordered, [labelled[p] for p in ordered]
