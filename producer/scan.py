"""Walk the submitted directories for image files, iteratively and in constant memory per directory."""

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
    """Image names under the roots, extensions matched case-insensitively, each directory's files in
    sorted order before its subdirectories (depth first, sorted).

    Every entry with an image extension that is not a directory is yielded, whatever it is: a FIFO,
    socket, device or dangling symlink gets a row saying why it is not an image rather than being
    skipped without a word. Symlinked directories are not followed, so a walk cannot loop or leave
    its root (workers re-check every file after resolving symlinks). An explicit stack, not
    recursion: any depth. Nothing is kept across directories but the stack: a root inside another
    root is walked once, as part of the outer one.
    """
    outer = [r for r in roots if not any(r != o and r.is_relative_to(o) for o in roots)]
    for root in outer:
        stack = [str(root)]
        while stack:
            directory = stack.pop()
            files, subdirs = _entries(directory)
            for name in files:
                yield os.path.join(directory, name)
            stack.extend(os.path.join(directory, name) for name in reversed(subdirs))


def _entries(directory: str) -> tuple[list[str], list[str]]:
    """(image file names, subdirectory names) of one directory, each sorted; names only, no stat."""
    files: list[str] = []
    subdirs: list[str] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                        files.append(entry.name)
                except OSError:
                    continue
    except OSError:  # unreadable directory: nothing under it can be read by workers either
        return [], []
    files.sort()
    subdirs.sort()
    return files, subdirs
