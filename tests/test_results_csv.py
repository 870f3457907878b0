"""CSV results: control characters in file names are escaped as the table shows them; --raw keeps them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from conftest import imgbatch_env, run_cli
from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.writes import add_images, create_job, mark_scanned

NAMES = ["/photos/\x1b[31mred.jpg", "/photos/tab\there.jpg", "/photos/new\nline.jpg", "/photos/plain.jpg"]
SHOWN = ["/photos/\\x1b[31mred.jpg", "/photos/tab\\there.jpg", "/photos/new\\nline.jpg", "/photos/plain.jpg"]


def _env(tmp_path: Path) -> dict[str, str]:
    db_url = f"sqlite:///{tmp_path / 'csv.db'}"
    engine = make_engine(db_url)
    ensure_schema(engine)
    with session_factory(engine).begin() as s:
        create_job(s, "job_csv", ["/photos"], "/m.onnx", "a" * 64, 64)
        add_images(s, "job_csv", NAMES)
        mark_scanned(s, "job_csv")
    engine.dispose()
    return imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)


def test_csv_escapes_control_characters_and_raw_keeps_them(tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = run_cli(["results", "job_csv", "--format", "csv"], env)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\t" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 + len(NAMES)  # a newline in a name no longer splits (or quotes across) a line
    assert sorted(r["path"] for r in csv.DictReader(io.StringIO(proc.stdout))) == sorted(SHOWN)

    raw = run_cli(["results", "job_csv", "--format", "csv", "--raw"], env)
    assert raw.returncode == 0, raw.stderr
    assert sorted(r["path"] for r in csv.DictReader(io.StringIO(raw.stdout))) == sorted(NAMES)
