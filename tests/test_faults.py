"""Faults injected into real processes with nobody waiting: only `imgbatch worker` processes run (the
test submits without --wait and reads the database). After each fault the job reaches `done` by
itself with exactly one result row per image.

Where the database matters (a pool process or a whole worker killed mid-write: concurrent writers,
the finish race) a fault runs on SQLite and PostgreSQL; the database outage runs on PostgreSQL (through
a TCP proxy the test cuts); Redis restarts and the producer's death on PostgreSQL, the scaled set-up.
Timeouts and TTLs are set short through settings, so each test takes seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PG_ADMIN_URL, fresh_postgres_database, imgbatch_env, run_cli
from faults import (
    CuttableProxy,
    HangMount,
    JobCounter,
    RestartableRedis,
    children,
    job_state,
    record_fault,
    wait_done,
)
from imgbatch.core.samples import make_variants

pytestmark = pytest.mark.slow
JOB_IMAGES = 600
# Short everything: heartbeats and the lease expire in 2 s, lost batches are re-sent after 3 s, a
# database outage is given up on after 3 s, the dispatcher looks every 0.25 s.
FAST = {
    "IMGBATCH_HEARTBEAT_TTL_S": "2",
    "IMGBATCH_LEASE_TTL_S": "2",
    "IMGBATCH_DISPATCH_INTERVAL_S": "0.25",
    "IMGBATCH_STALL_SECONDS": "3",
    "IMGBATCH_BATCH_SIZE": "16",
    "IMGBATCH_MAX_IN_FLIGHT": "8",
    "IMGBATCH_RETRY_BACKOFF_S": "0.5",
    "IMGBATCH_DB_RETRY_S": "3",
}


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fault-photos")
    make_variants(directory, JOB_IMAGES, seed=11, min_side=160, max_side=400)
    return directory


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'faults.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


def _db_name(url: str) -> str:
    return "SQLite" if url.startswith("sqlite") else "PostgreSQL"


def _env(
    tmp_path: Path, broker: RestartableRedis, db_url: str, model_path: Path, **extra: str
) -> dict[str, str]:
    return imgbatch_env(
        tmp_path,
        IMGBATCH_REDIS_URL=broker.url,
        IMGBATCH_DATABASE_URL=db_url,
        IMGBATCH_MODEL=str(model_path),
        **{**FAST, **extra},
    )


def _submit(env: dict[str, str], *args: str) -> str:
    """`imgbatch submit` without --wait: it records the job and returns."""
    proc = run_cli(["submit", *args], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _done_exactly_once(fault: str, db_url: str, counter: JobCounter, job_id: str, expected: int) -> None:
    seconds = wait_done(counter, job_id)
    assert record_fault(fault, _db_name(db_url), counter, job_id, seconds) == (
        expected,
        expected,
        expected,
        0,
    )


def test_kill_9_of_a_pool_process_mid_batch(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, any_db: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, any_db, model_path)
    worker = start_worker(env, concurrency=2)
    counter = JobCounter(any_db)
    job_id = _submit(env, str(job_dir))
    counter.wait_for_results(150)
    pool = children(worker.proc.pid)
    assert len(pool) == 2
    os.kill(pool[0], signal.SIGKILL)
    _done_exactly_once("pool process kill -9 mid-batch", any_db, counter, job_id, JOB_IMAGES)
    assert "WorkerLostError" in worker.log() or "SIGKILL" in worker.log(), worker.log()[-3000:]
    assert worker.proc.poll() is None, "the worker itself must survive losing a pool process"
    counter.close()


def test_kill_9_of_the_whole_worker_then_a_new_one(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, any_db: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, any_db, model_path)
    first = start_worker(env, concurrency=2)
    counter = JobCounter(any_db)
    job_id = _submit(env, str(job_dir))
    counter.wait_for_results(150)
    os.killpg(first.proc.pid, signal.SIGKILL)  # the main process (and its dispatcher) and its pool
    first.proc.wait()
    second = start_worker(env, concurrency=2)
    _done_exactly_once("whole worker kill -9, a new one started", any_db, counter, job_id, JOB_IMAGES)
    # The batches the dead worker had started came back by its missing heartbeat, not after
    # Redis's visibility timeout (an hour).
    assert "is gone" in second.log(), second.log()[-3000:]
    counter.close()


def test_redis_killed_and_restarted_empty_mid_job(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, pg_url, model_path)
    worker = start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)
    job_id = _submit(env, str(job_dir))
    counter.wait_for_results(150)
    broker.stop()
    time.sleep(2)
    broker.start()  # empty: queue, ledger, cursors, lease and heartbeats are gone
    _done_exactly_once("Redis killed, restarted empty", pg_url, counter, job_id, JOB_IMAGES)
    assert worker.proc.poll() is None
    counter.close()


def test_database_unreachable_longer_than_the_retry_budget(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    pg_port = int(PG_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(pg_port)
    via_proxy = pg_url.replace(f":{pg_port}/", f":{proxy.port}/")
    env = _env(tmp_path, broker, via_proxy, model_path)
    worker = start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)  # the test itself reads directly
    job_id = _submit(env, str(job_dir))
    counter.wait_for_results(150)
    proxy.cut(9)  # three times the workers' retry budget (IMGBATCH_DB_RETRY_S=3)
    time.sleep(9)
    _done_exactly_once("database unreachable 9 s (retry budget 3 s)", pg_url, counter, job_id, JOB_IMAGES)
    assert "batch given back" in worker.log(), worker.log()[-3000:]
    proxy.close()
    counter.close()


def test_producer_killed_mid_scan_then_rerun(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    """The scan stops in a directory whose listing hangs (a FUSE mount); the producer is killed
    there. Workers already classify what was scanned; re-running the submit finishes the scan."""
    photos = tmp_path / "scanned"
    photos.mkdir()
    sources = sorted(job_dir.iterdir())[:300]
    for src in sources:
        os.link(src, photos / src.name)
    mount = HangMount(photos / "zz-mount", [f"a.jpg={sources[0]}", "slow/"])
    env = _env(tmp_path, broker, pg_url, model_path, IMGBATCH_SCAN_CHUNK="50")
    start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)
    submit = subprocess.Popen(
        [sys.executable, "-m", "imgbatch", "submit", str(photos)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        counter.wait_for_results(20)  # workers start on the first chunks while the scan goes on
        from sqlalchemy import select

        from imgbatch.db.models import Job

        with counter.sessions() as s:
            job_id = s.scalar(select(Job.id))
        assert job_state(counter, job_id) == "scanning" and submit.poll() is None
        submit.kill()
        # A process waiting in a FUSE directory listing dies only once the listing returns.
        mount.open_gate()
        submit.wait(timeout=30)
        assert _submit(env, str(photos)) == job_id  # resumes the same job and finishes its scan
        _done_exactly_once("producer kill -9 mid-scan, re-run", pg_url, counter, job_id, len(sources) + 2)
    finally:
        mount.close()
    counter.close()
