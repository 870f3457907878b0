"""Walk the submitted directories for image files, iteratively and in constant memory per directory;
list the submitted object-store prefixes a page at a time (imgbatch.core.stores)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from imgbatch.core.errors import UserError
from imgbatch.core.stores import is_url, list_objects, store_root

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


def resolve_sources(sources: Sequence[str | Path]) -> list[str]:
    """The job's roots: directories resolved (`resolve_roots`), URL prefixes normalized and checked to
    hold at least one object, so that a missing bucket or an empty prefix is a UserError before any
    job is recorded."""
    if not sources:
        raise UserError("give at least one directory of images (or an s3://, gs:// or az:// prefix)")
    roots: list[str] = []
    for source in sources:
        if is_url(str(source)):
            root = store_root(str(source))
            if next(list_objects(root), None) is None:
                raise UserError(f"no objects under {root}")
        else:
            root = str(resolve_roots([source])[0])
        if root not in roots:
            roots.append(root)
    return roots


def listing(roots: Sequence[str]) -> Iterator[tuple[str, int | None]]:
    """(image path or object URL, size from the listing or None) of every image under the roots:
    directories as `scan` walks them, prefixes as their store lists them, page by page. An object
    is an image by its extension, as a file is; a prefix inside another root is listed once."""
    urls = [r for r in roots if is_url(r)]
    directories = [Path(r) for r in roots if not is_url(r)]
    for path in scan(directories):
        yield path, None
    for root in urls:
        if any(other != root and root.startswith(other) for other in urls):
            continue
        for url, size in list_objects(root):
            if os.path.splitext(url.rsplit("/", 1)[-1])[1].lower() in IMAGE_EXTENSIONS:
                yield url, size


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
