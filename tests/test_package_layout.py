"""The installed wheel: one import namespace, with every module of the user's folders in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _package_dirs() -> dict[str, str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-dir"]


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files, so the build leaves nothing in the work tree and sees no stale build/."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_wheel_installs_only_the_imgbatch_namespace(tmp_path: Path) -> None:
    source = _tracked_copy(tmp_path / "src")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("imgbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"imgbatch"}, f"top-level names in the wheel: {sorted(top)}"

    # Every source module of every mapped folder is in the wheel at its imgbatch.* place.
    missing = []
    for package, folder in _package_dirs().items():
        for source in (REPO / folder).rglob("*.py"):
            relative = source.relative_to(REPO / folder)
            target = "/".join([*package.split("."), *relative.parts])
            if target not in names:
                missing.append(target)
    assert not missing, f"modules left out of the wheel: {missing}"
    assert "imgbatch/db/migrations/script.py.mako" in names
    assert any(name.startswith("imgbatch/core/photos/") and name.endswith(".jpg") for name in names)


def test_no_generic_top_level_module_is_importable_from_site_packages(tmp_path: Path) -> None:
    """Outside the checkout, `import db` (or worker, export, producer) must not find this project."""
    code = (
        "import importlib.util, sys\n"
        "found = [n for n in ('db', 'worker', 'producer', 'export', 'core') if importlib.util.find_spec(n)]\n"
        "import imgbatch.db.models, imgbatch.worker.app, imgbatch.producer.submit, imgbatch.core.settings\n"
        "print(','.join(found))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"generic names importable: {proc.stdout.strip()}"
