"""Walk the submitted directories for image files."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from imgbatch.core.errors import UserError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def resolve_roots(directories: Sequence[str | Path]) -> list[Path]:
    """The directories as resolved absolute paths; UserError names the first that is not a directory."""
    if not directories:
        raise UserError("give at least one directory of images")
    roots: list[Path] = []
    for directory in directories:
        path = Path(directory).expanduser()
        if not path.exists():
            raise UserError(f"no such directory: {directory}")
        if not path.is_dir():
            raise UserError(f"not a directory: {directory}")
        real = path.resolve()
        if real not in roots:
            roots.append(real)
    return roots


def scan(roots: Sequence[Path]) -> Iterator[str]:
    """Image files under the roots, recursively, extensions matched case-insensitively, in sorted order.

    Symlinked directories are not followed, so a walk cannot loop or leave its root; files are
    yielded under their root's path (workers re-check after resolving symlinks).
    """
    seen: set[str] = set()
    for root in roots:
        for path in _walk(str(root)):
            if path not in seen:
                seen.add(path)
                yield path


def _walk(directory: str) -> Iterator[str]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:  # unreadable directory: nothing under it can be read by workers either
        return
    subdirs = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            # Regular files and symlinks to them; FIFOs and devices would block or never end a read.
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                yield entry.path
        except OSError:
            continue
    for subdir in subdirs:
        yield from _walk(subdir)
