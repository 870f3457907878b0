"""mypy over the installed layout: the folders of pyproject's package-dir, linked as one `imgbatch` tree.

The editable install maps `imgbatch.db` to `db/` (and so on) with an import hook that mypy cannot follow,
so this links each folder where the wheel puts it, under build/typecheck/, and checks that tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "typecheck"


def link_tree() -> Path:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    root = TREE / "imgbatch"
    root.mkdir(parents=True)
    for entry in (REPO / mapping["imgbatch"]).iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, root / entry.name)
    for package, folder in mapping.items():
        if package != "imgbatch":
            os.symlink(REPO / folder, TREE.joinpath(*package.split(".")))
    return TREE


def main() -> int:
    tree = link_tree()
    env = dict(os.environ, MYPYPATH=str(tree))
    return subprocess.call([sys.executable, "-m", "mypy", "-p", "imgbatch", *sys.argv[1:]], cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
