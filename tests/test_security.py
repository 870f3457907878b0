"""The queue accepts JSON only, messages cannot point workers outside a job, and passwords in the
Redis and database URLs never reach logs or output."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import imgbatch_env, run_cli
from faults import JobCounter, RestartableRedis
from imgbatch.db.models import Image, Result

pytestmark = pytest.mark.slow


def _send(env: dict[str, str], code: str) -> None:
    """Publish from a separate process configured exactly like a producer."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_pickle_message_is_refused_not_executed(
    tmp_path: Path, service_env: dict[str, str], start_worker: Any, photo_dir: Path
) -> None:
    marker = tmp_path / "pwned"
    worker = start_worker(service_env)
    _send(
        service_env,
        f"""
import os
from imgbatch.worker.app import TASK_CLASSIFY, create_app
from imgbatch.core.settings import Settings
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
settings = Settings()
app = create_app(settings)
app.send_task(TASK_CLASSIFY, kwargs={{"job_id": Evil(), "items": [], "enqueued_at": 0}},
              serializer="pickle", queue=settings.queue_name)
""",
    )
    deadline = time.monotonic() + 20
    while "ContentDisallowed" not in worker.log() and "Refusing to deserialize" not in worker.log():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    assert not marker.exists(), "a pickled payload was executed"
    assert worker.proc.poll() is None
    done = run_cli(["submit", str(photo_dir), "--wait"], service_env)  # and it still works
    assert done.returncode == 0, done.stderr


def test_crafted_messages_cannot_leave_the_job(
    tmp_path: Path, service_env: dict[str, str], start_worker: Any, photo_dir: Path, db_url: str
) -> None:
    submitted = run_cli(["submit", str(photo_dir)], service_env)  # queued, no worker yet
    job_id = submitted.stdout.strip().splitlines()[-1]
    counter = JobCounter(db_url)
    with counter.sessions() as s:
        image_id = s.scalar(select(Image.id).where(Image.job_id == job_id).limit(1))
    # A real image id with a path outside the job, and an id of no image of this job.
    _send(
        service_env,
        f"""
from imgbatch.worker.app import TASK_CLASSIFY, create_app
from imgbatch.core.settings import Settings
settings = Settings()
app = create_app(settings)
items = [[{image_id}, "/etc/passwd"], [987654321, "{photo_dir / "cat.jpg"}"],
         [{image_id}, "{photo_dir}/../../etc/hostname"]]
app.send_task(TASK_CLASSIFY, kwargs={{"job_id": "{job_id}", "items": items, "enqueued_at": 0}},
              queue=settings.queue_name)
""",
    )
    worker = start_worker(service_env)
    finished = run_cli(["resume", job_id, "--wait"], service_env)
    assert finished.returncode == 0, finished.stderr
    assert "ignored" in worker.log()
    with counter.sessions() as s:
        rows = s.execute(
            select(Image.path, Result.status)
            .join(Result, Result.image_id == Image.id)
            .where(Result.job_id == job_id)
        ).all()
    assert len(rows) == len(list(photo_dir.iterdir()))
    assert all(path.startswith(str(photo_dir)) and status == "ok" for path, status in rows)
    counter.close()


def test_passwords_never_appear_in_logs_or_output(
    tmp_path: Path, model_path: Path, start_worker: Any, photo_dir: Path
) -> None:
    from conftest import _postgres_reachable, fresh_postgres_database

    if not _postgres_reachable():
        pytest.fail("PostgreSQL is needed for this test")
    redis_pw, pg_pw = "redis-Pa55-word", "pg-Pa55-word"
    broker = RestartableRedis(password=redis_pw)
    broker.start()
    try:
        with fresh_postgres_database() as url:
            # The local server trusts loopback, so any password is accepted: it must still be hidden.
            db_url = url.replace("postgres@", f"postgres:{pg_pw}@")
            env = imgbatch_env(
                tmp_path,
                IMGBATCH_REDIS_URL=broker.url,
                IMGBATCH_DATABASE_URL=db_url,
                IMGBATCH_MODEL=str(model_path),
            )
            worker = start_worker(env)
            done = run_cli(["submit", str(photo_dir), "--wait"], env)
            assert done.returncode == 0, done.stderr
            status = run_cli(["status"], env)
            worker.stop()
            seen = worker.log() + done.stdout + done.stderr + status.stdout + status.stderr
            assert "redis://" in worker.log()  # the banner shows the broker, masked
            assert redis_pw not in seen and pg_pw not in seen
    finally:
        broker.stop()
