"""`retry`, `cancel` and `delete` against real workers, Redis and databases."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select

from conftest import run_cli
from faults import JobCounter, job_state, wait_done
from imgbatch.db.models import Image, Job, Result


def _submit(env: dict[str, str], *args: str) -> str:
    proc = run_cli(["submit", *args], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_retry_cancel_delete(
    tmp_path: Path, photo_dir: Path, service_env: dict[str, str], start_worker: Any, db_url: str
) -> None:
    env = {**service_env, "IMGBATCH_HEARTBEAT_TTL_S": "2", "IMGBATCH_DISPATCH_INTERVAL_S": "0.25"}
    photos = tmp_path / "photos"
    shutil.copytree(photo_dir, photos)
    (photos / "later.jpg").write_bytes(b"")
    (photos / "never.jpg").write_bytes(b"")
    counter = JobCounter(db_url)

    # cancel: pending images are no longer sent; a worker started afterwards does nothing with them.
    cancelled = _submit(env, str(photos))
    assert run_cli(["cancel", cancelled[:8]], env).returncode == 0
    assert job_state(counter, cancelled) == "cancelled"
    again = run_cli(["cancel", cancelled[:8]], env)
    assert again.returncode == 2 and "nothing to cancel" in again.stderr
    resumed = run_cli(["resume", cancelled[:8]], env)
    assert resumed.returncode == 2 and "is cancelled" in resumed.stderr, resumed.stderr
    assert job_state(counter, cancelled) == "cancelled"
    start_worker(env, concurrency=1)

    # retry: two empty files fail; one is fixed, `retry --reason` re-runs that kind of error only.
    job_id = _submit(env, str(photos), "--new")
    wait_done(counter, job_id)
    total = len(list(photos.iterdir()))
    assert counter.exactly_once(job_id) == (total, total, total, 0)
    shutil.copy(photo_dir / "cat.jpg", photos / "later.jpg")
    assert run_cli(["retry", job_id, "--reason", "not a decodable"], env).returncode == 2
    retried = run_cli(["retry", job_id, "--reason", "empty file", "--wait"], env)
    assert retried.returncode == 0, retried.stderr
    assert counter.exactly_once(job_id) == (total, total, total, 0) and job_state(counter, job_id) == "done"
    with counter.sessions() as s:
        errors = dict(
            s.execute(
                select(Image.path, Result.error)
                .join(Result, Result.image_id == Image.id)
                .where(Image.job_id == job_id)
            ).all()
        )
    assert errors[str(photos / "later.jpg")] is None and errors[str(photos / "never.jpg")] == "empty file"
    time.sleep(1)
    assert counter.exactly_once(cancelled)[3] == total, "a cancelled job's images were sent"

    # delete: rows gone, Redis keys gone.
    deleted = run_cli(["delete", job_id], env)
    assert deleted.returncode == 0, deleted.stderr
    with counter.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) == 0
        assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == 0
        assert s.get(Job, job_id) is None
    keys = redis.Redis.from_url(env["IMGBATCH_REDIS_URL"]).keys(f"imgbatch:*{job_id}*")
    assert keys == []
    counter.close()
