from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgbatch.core.errors import UserError
from imgbatch.producer.scan import resolve_roots, scan


def test_scan_is_recursive_case_insensitive_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for name in ["a.JPG", "b/x.png", "b/deep/y.JpEg", "notes.txt", "b/z.webp", "noext", "c.tif"]:
        (tmp_path / name).write_bytes(b"x")
    found = [os.path.relpath(p, tmp_path) for p in scan(resolve_roots([tmp_path]))]
    assert found == ["a.JPG", "c.tif", "b/x.png", "b/z.webp", "b/deep/y.JpEg"]


def test_overlapping_roots_list_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    assert len(list(scan(resolve_roots([tmp_path, tmp_path / "sub"])))) == 1


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert list(scan(resolve_roots([root]))) == []


def test_missing_and_non_directory_roots_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        resolve_roots([tmp_path / "missing"])
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not a directory"):
        resolve_roots([tmp_path / "file.jpg"])


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    """The walk is iterative: 1,500 levels (the recursive walk crashed past about 1,000)."""
    levels = [tmp_path]
    for _ in range(1500):
        levels.append(levels[-1] / "d")
        os.mkdir(levels[-1])  # 1,500 * 2 characters: within PATH_MAX (4,096)
    (levels[-1] / "bottom.jpg").write_bytes(b"x")
    try:
        assert [p.endswith("bottom.jpg") for p in scan(resolve_roots([tmp_path]))] == [True]
    finally:
        # Removed here, deepest first: pytest's own clean-up of old temp dirs is recursive and
        # would hit the recursion limit on this tree at the end of a later session.
        (levels[-1] / "bottom.jpg").unlink()
        for level in reversed(levels[1:]):
            os.rmdir(level)


def test_fifos_and_dangling_symlinks_are_recorded(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "notes.txt").write_text("not an image")
    names = sorted(os.path.basename(p) for p in scan(resolve_roots([tmp_path])))
    assert names == ["dangling.png", "pipe.jpg"]
