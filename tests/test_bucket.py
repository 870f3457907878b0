"""Images in a bucket, against a real S3-compatible server (moto's standalone server, tests/s3server.py)
and real Redis, databases and worker processes: one row per object with the labels the same files
get on disk, bad objects as error rows, the listing paged, objects outside the prefix refused,
store outages leaving images pending, and the store's secret key nowhere in what imgbatch writes."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from conftest import assert_one_line_error, imgbatch_env, run_cli
from faults import JobCounter
from imgbatch.core.names import decode_path
from imgbatch.db.models import Image, Job, Result
from s3server import SECRET_KEY, MotoServer, free_port

pytestmark = pytest.mark.slow


def _bucket() -> str:
    return f"imgbatch-{uuid.uuid4().hex[:10]}"


def _photo_objects(photo_dir: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}{p.name}": p.read_bytes() for p in sorted(photo_dir.iterdir())}


def _rows(counter: JobCounter, job_id: str) -> dict[str, tuple[Any, ...]]:
    """stored path -> (size_bytes, status, label, error) of every image of the job."""
    with counter.sessions() as s:
        found = s.execute(
            select(Image.path, Image.size_bytes, Result.status, Result.label, Result.error)
            .outerjoin(Result, Result.image_id == Image.id)
            .where(Image.job_id == job_id)
        ).all()
    return {r.path: (r.size_bytes, r.status, r.label, r.error) for r in found}


def _database_text(counter: JobCounter) -> str:
    """Every job, image and result row as text."""
    with counter.sessions() as s:
        rows = [*s.execute(select(Job.__table__)).all(), *s.execute(select(Image.__table__)).all()]
        rows += s.execute(select(Result.__table__)).all()
    return "\n".join(repr(tuple(r)) for r in rows)


@contextlib.contextmanager
def _monitor(redis_url: str) -> Iterator[list[str]]:
    """Every command Redis runs on the URL's database index while inside (MONITOR), with the Celery
    message bodies (base64 in kombu's envelope) decoded alongside."""
    index = int(redis_url.rsplit("/", 1)[1])
    client = redis.Redis.from_url(redis_url)
    seen: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        with client.monitor() as monitor:
            ready.set()
            while not stop.is_set():
                try:
                    command = monitor.next_command()
                except (redis.exceptions.RedisError, OSError, ValueError):
                    return
                if command.get("db") == index:
                    seen.append(command["command"])

    ready = threading.Event()
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield seen
    finally:
        stop.set()
        redis.Redis.from_url(redis_url).ping()  # one more command wakes the listener up
        thread.join(10)
        for command in list(seen):
            for body in re.findall(r'body\\+": \\+"([A-Za-z0-9+/=]+)', command):
                seen.append(base64.b64decode(body).decode("utf-8", "replace"))


def test_run_on_a_bucket_matches_the_same_files_on_disk(
    tmp_path: Path, photo_dir: Path, service_env: dict[str, str], s3_server: MotoServer, db_url: str
) -> None:
    bucket = _bucket()
    photos = _photo_objects(photo_dir, "photos/")
    limit = max(len(b) for b in photos.values()) + 1000
    cat, coffee = (photo_dir / "cat.jpg").read_bytes(), (photo_dir / "coffee.jpg").read_bytes()
    odd_name = "photos/sub dir/naïve\\ cät [1].jpg"  # stored as imgbatch.core.names encodes names
    photos[odd_name] = cat
    bad = {
        "photos/bad/empty.jpg": (b"", "empty file"),
        "photos/bad/truncated.jpg": (coffee[: len(coffee) // 3], "not a decodable image"),
        "photos/bad/not-an-image.jpg": (b"just text, not a picture\n" * 40, "not a decodable image"),
        "photos/bad/huge.jpg": (cat[:2] + b"\0" * limit, "file too large"),
    }
    others = {"photos/notes.txt": b"not an image", "photos2/cat.jpg": cat, "secret/cat.jpg": cat}
    s3_server.upload(bucket, {**photos, **{k: v for k, (v, _) in bad.items()}, **others})
    env = {**service_env, **s3_server.env(), "IMGBATCH_MAX_FILE_BYTES": str(limit)}

    with _monitor(service_env["IMGBATCH_REDIS_URL"]) as commands:
        on_bucket = run_cli(["run", f"s3://{bucket}/photos", "--workers", "1"], env)
    assert on_bucket.returncode == 0, on_bucket.stderr
    on_disk = run_cli(["run", str(photo_dir), "--workers", "1"], env)
    assert on_disk.returncode == 0, on_disk.stderr

    counter = JobCounter(db_url)
    with counter.sessions() as s:
        bucket_job, disk_job = s.scalars(select(Job.id).order_by(Job.created_at)).all()
        assert s.scalar(select(Job.roots).where(Job.id == bucket_job)) == [f"s3://{bucket}/photos/"]
    rows = {decode_path(path).decode(): row for path, row in _rows(counter, bucket_job).items()}
    # One row per image object under the prefix, nothing of photos2/ or secret/, no .txt.
    assert sorted(rows) == sorted(f"s3://{bucket}/{key}" for key in [*photos, *bad])
    assert counter.exactly_once(bucket_job)[1:] == (len(rows), len(rows), 0)
    for key, (content, reason) in bad.items():
        size, status, _, error = rows[f"s3://{bucket}/{key}"]
        assert (size, status) == (len(content), "error") and error.startswith(reason), (key, error)
    disk = {Path(path).name: label for path, (_, _, label, _) in _rows(counter, disk_job).items()}
    for key, data in photos.items():
        size, status, label, error = rows[f"s3://{bucket}/{key}"]
        assert (size, status, error) == (len(data), "ok", None)
        assert label == disk["cat.jpg" if key == odd_name else key.rsplit("/", 1)[1]]
    # The too large object was refused from its listed size: never downloaded.
    assert s3_server.fetched(f"{bucket}/photos/bad/huge.jpg") == []
    assert s3_server.fetched(f"{bucket}/photos/cat.jpg")

    worker_log = (tmp_path / "data" / "logs" / "workers.log").read_text(errors="replace")
    messages = "\n".join(commands)
    assert f"s3://{bucket}/photos/cat.jpg" in messages  # the batches were seen on their way
    for text in (on_bucket.stdout, on_bucket.stderr, worker_log, messages, _database_text(counter)):
        assert SECRET_KEY not in text
    counter.engine.dispose()


def test_bad_sources_are_one_line_errors(
    tmp_path: Path, redis_url: str, s3_server: MotoServer, model_path: Path
) -> None:
    bucket = _bucket()
    s3_server.upload(bucket, {"photos/a.jpg": b"x"})
    env = {
        **imgbatch_env(tmp_path, IMGBATCH_REDIS_URL=redis_url, IMGBATCH_MODEL=str(model_path)),
        **s3_server.env(),
    }
    missing = "no such bucket or prefix: s3://no-such-bucket-imgbatch/"
    assert_one_line_error(run_cli(["submit", "s3://no-such-bucket-imgbatch/photos/"], env), missing)
    assert_one_line_error(run_cli(["run", "s3://no-such-bucket-imgbatch/photos/"], env), missing)
    empty = f"no objects under s3://{bucket}/nothing-here/"
    assert_one_line_error(run_cli(["submit", f"s3://{bucket}/nothing-here/"], env), empty)
    s3_server.upload(bucket, {"docs/readme.txt": b"text"})
    assert_one_line_error(run_cli(["submit", f"s3://{bucket}/docs/"], env), "no images found")
    leaked = run_cli(["submit", f"s3://AKIA:{SECRET_KEY}@{bucket}/photos/"], env)
    assert_one_line_error(leaked, "credentials or parameters", "***")
    assert SECRET_KEY not in leaked.stderr + leaked.stdout
    unreachable = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    assert_one_line_error(run_cli(["submit", f"s3://{bucket}/photos/"], unreachable), "cannot list")


def test_listing_is_paged_and_chunked(
    tmp_path: Path, redis_url: str, s3_server: MotoServer, model_path: Path
) -> None:
    """2,500 keys: three ListObjectsV2 pages of at most 1,000, inserted 700 rows per transaction."""
    bucket = _bucket()
    keys = {f"many/{i // 100:02d}/k{i:05d}.jpg": b"x" * (1 + i % 7) for i in range(2500)}
    s3_server.upload(bucket, keys)
    db_url = f"sqlite:///{tmp_path / 'imgbatch.db'}"
    env = {
        **imgbatch_env(
            tmp_path,
            IMGBATCH_REDIS_URL=redis_url,
            IMGBATCH_DATABASE_URL=db_url,
            IMGBATCH_MODEL=str(model_path),
        ),
        **s3_server.env(),
        "IMGBATCH_SCAN_CHUNK": "700",
    }
    proc = run_cli(["submit", f"s3://{bucket}/many/"], env)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    counter = JobCounter(db_url)
    rows = _rows(counter, job_id)
    assert {path: size for path, (size, *_) in rows.items()} == {
        f"s3://{bucket}/{key}": len(data) for key, data in keys.items()
    }
    pages = [ln for ln in s3_server.log().splitlines() if f"GET /{bucket}?list-type=2" in ln]
    assert len([ln for ln in pages if "continuation-token" in ln]) >= 2, pages
    counter.engine.dispose()


def _send(env: dict[str, str], job_id: str, items: list[list[Any]]) -> None:
    code = f"""
from imgbatch.worker.app import TASK_CLASSIFY, create_app
from imgbatch.core.settings import Settings
settings = Settings()
app = create_app(settings)
app.send_task(TASK_CLASSIFY, kwargs={{"job_id": {job_id!r}, "items": {items!r}, "enqueued_at": 0}},
              queue=settings.queue_name)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_objects_outside_the_prefix_are_refused(
    photo_dir: Path, service_env: dict[str, str], s3_server: MotoServer, start_worker: Any, db_url: str
) -> None:
    from imgbatch.db.engine import session_factory
    from imgbatch.db.writes import insert_images

    bucket = _bucket()
    cat = (photo_dir / "cat.jpg").read_bytes()
    s3_server.upload(bucket, {"photos/cat.jpg": cat, "secret/cat.jpg": cat, "photos-old/cat.jpg": cat})
    env = {**service_env, **s3_server.env()}
    proc = run_cli(["submit", f"s3://{bucket}/photos/"], env)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    counter = JobCounter(db_url)
    with counter.sessions() as s:
        image_id = s.scalar(select(Image.id).where(Image.job_id == job_id))
    # A message naming objects the job does not have (by a real image id, and by none) ...
    crafted = [f"s3://{bucket}/secret/cat.jpg", f"s3://{bucket}/photos/../secret/cat.jpg"]
    _send(env, job_id, [[image_id, url] for url in crafted] + [[987654321, crafted[0]]])
    # ... and rows that got into the database naming objects outside the prefix.
    outside = [*crafted, f"s3://{bucket}/photos-old/cat.jpg", f"gs://{bucket}/photos/cat.jpg"]
    with session_factory(counter.engine).begin() as s:
        insert_images(s, job_id, outside, [len(cat)] * len(outside))
    worker = start_worker(env)
    done = run_cli(["resume", job_id, "--wait"], env)
    assert done.returncode == 0, done.stderr
    assert "ignored" in worker.log()
    rows = _rows(counter, job_id)
    assert rows[f"s3://{bucket}/photos/cat.jpg"][1] == "ok"
    for url in outside:
        assert rows[url][1:] == ("error", None, "outside the job's directories")
    assert s3_server.fetched(f"{bucket}/secret/cat.jpg") == []
    assert s3_server.fetched(f"{bucket}/photos-old/cat.jpg") == []
    counter.engine.dispose()


def test_store_outage_leaves_images_pending(
    photo_dir: Path, service_env: dict[str, str], s3_server: MotoServer, start_worker: Any, db_url: str
) -> None:
    """Workers that cannot reach the store (connection refused) write no row: the images stay pending,
    are tried again with backoff, and are classified once the store answers."""
    bucket = _bucket()
    s3_server.upload(bucket, _photo_objects(photo_dir, "photos/"))
    env = {**service_env, **s3_server.env(), "IMGBATCH_RETRY_BACKOFF_S": "0.5", "IMGBATCH_MAX_ATTEMPTS": "50"}
    proc = run_cli(["submit", f"s3://{bucket}/photos/"], env)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "2"}
    worker = start_worker(dead)
    deadline = time.monotonic() + 120
    while worker.log().count("to try again") < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.log().count("to try again") >= 3, worker.log()
    assert "EndpointConnectionError" in worker.log() or "Connect" in worker.log()
    counter = JobCounter(db_url)
    images, rows, _, pending = counter.exactly_once(job_id)
    assert (rows, pending) == (0, images)
    worker.stop()

    start_worker(env)
    done = run_cli(["resume", job_id, "--wait"], env)
    assert done.returncode == 0, done.stderr
    assert counter.exactly_once(job_id) == (images, images, images, 0)
    assert all(status == "ok" for _, status, _, _ in _rows(counter, job_id).values())
    counter.engine.dispose()


def test_results_of_a_bucket_job_show_its_urls(
    tmp_path: Path, photo_dir: Path, redis_url: str, s3_server: MotoServer, model_path: Path
) -> None:
    """`imgbatch results` lists the objects by URL (JSON lines), as it lists files by path."""
    bucket = _bucket()
    s3_server.upload(bucket, {"p/cat.jpg": (photo_dir / "cat.jpg").read_bytes()})
    env = {
        **imgbatch_env(tmp_path, IMGBATCH_REDIS_URL=redis_url, IMGBATCH_MODEL=str(model_path)),
        **s3_server.env(),
    }
    assert run_cli(["run", f"s3://{bucket}/p/", "--workers", "1"], env).returncode == 0
    out = run_cli(["results", "latest", "--format", "jsonl"], env)
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert (row["path"], row["status"]) == (f"s3://{bucket}/p/cat.jpg", "ok")
