"""End to end with real processes: `imgbatch submit` -> Redis -> `imgbatch worker` (Celery prefork) -> DB.

Runs on SQLite and on a fresh PostgreSQL database. Known photos must get their known classes, broken
files must become error rows with a reason, and every image must have exactly one row.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from sqlalchemy import func, select

from conftest import run_cli
from imgbatch.core.samples import EXPECTED_CLASSES
from imgbatch.db.engine import make_engine, session_factory
from imgbatch.db.models import Image, Result

BROKEN = {
    "empty.jpg": (b"", "empty file"),
    "random.jpg": (bytes(range(256)) * 64, "not a decodable image"),
    "truncated.jpg": (None, "not a decodable image"),  # made from a real photo below
}


def _job_dir(tmp_path: Path, photo_dir: Path) -> Path:
    job_dir = tmp_path / "photos"
    shutil.copytree(photo_dir, job_dir)
    (job_dir / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(photo_dir / "cat.jpg", job_dir / "nested" / "deeper" / "CAT_COPY.JPG")
    (job_dir / "notes.txt").write_text("not an image, not scanned")
    for name, (content, _) in BROKEN.items():
        if content is None:
            data = (photo_dir / "coffee.jpg").read_bytes()
            content = data[: len(data) // 3]
        (job_dir / name).write_bytes(content)
    return job_dir


def test_submit_to_real_workers_classifies_known_photos(
    tmp_path: Path,
    photo_dir: Path,
    service_env: dict[str, str],
    start_worker,
    db_url: str,  # type: ignore[no-untyped-def]
) -> None:
    job_dir = _job_dir(tmp_path, photo_dir)
    start_worker(service_env, concurrency=2)
    proc = run_cli(["submit", str(job_dir), "--batch-size", "4", "--wait"], service_env)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    assert len(job_id) == 32

    photos = sorted(p.name for p in photo_dir.iterdir())
    expected_total = len(photos) + 1 + len(BROKEN)  # + the nested copy; notes.txt is not scanned

    engine = make_engine(db_url)
    with session_factory(engine)() as session:
        assert (
            session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id))
            == expected_total
        )
        assert (
            session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
            == expected_total
        )
        # Exactly one result per image: the database forbids duplicates, and none is missing.
        per_image = session.execute(
            select(Result.image_id, func.count()).where(Result.job_id == job_id).group_by(Result.image_id)
        ).all()
        assert all(n == 1 for _, n in per_image) and len(per_image) == expected_total
        workers = set(session.scalars(select(Result.worker).where(Result.job_id == job_id)))
    engine.dispose()
    assert workers and all(":" in w for w in workers)

    out = run_cli(["results", job_id, "--format", "csv"], service_env)
    assert out.returncode == 0, out.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert len(rows) == expected_total
    for field in (
        "path",
        "status",
        "label",
        "class_index",
        "score",
        "error",
        "decode_ms",
        "infer_ms",
        "worker",
    ):
        assert field in rows["cat.jpg"]
    for name in ("cat.jpg", "CAT_COPY.JPG"):
        assert rows[name]["status"] == "ok" and int(rows[name]["class_index"]) in EXPECTED_CLASSES["cat"], (
            rows[name]
        )
    assert int(rows["coffee.jpg"]["class_index"]) in EXPECTED_CLASSES["coffee"], rows["coffee.jpg"]
    for name, (_, reason) in BROKEN.items():
        assert rows[name]["status"] == "error" and reason in rows[name]["error"], rows[name]
        assert rows[name]["label"] == ""
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert all(
        0 < float(r["score"]) <= 1 and float(r["infer_ms"]) > 0 and float(r["decode_ms"]) > 0 for r in ok
    )
    assert all(len(json.loads(r["top5"])) == 5 for r in ok)

    as_json = run_cli(["results", "latest", "--format", "json"], service_env)
    assert as_json.returncode == 0, as_json.stderr
    assert sorted(Path(r["path"]).name for r in json.loads(as_json.stdout)) == sorted(rows)

    status = run_cli(["status", job_id[:10]], service_env)
    assert status.returncode == 0 and "state=done" in status.stdout
    assert f"total={expected_total}" in status.stdout and f"error={len(BROKEN)}" in status.stdout
