"""Faults injected into real processes; after each, the job completes with exactly one row per image.

Each test runs a 2,000-image job of real photos through a private redis-server (so it can be killed
and restarted empty), real `imgbatch worker` processes and a fresh PostgreSQL database.
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

from conftest import PG_ADMIN_URL, fresh_postgres_database, imgbatch_env
from faults import CuttableProxy, JobCounter, RestartableRedis, children
from imgbatch.core.samples import make_variants

pytestmark = pytest.mark.slow
JOB_IMAGES = 2000


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fault-photos")
    make_variants(directory, JOB_IMAGES, seed=11, min_side=160, max_side=400)
    return directory


@pytest.fixture
def broker() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def _env(
    tmp_path: Path, broker: RestartableRedis, db_url: str, model_path: Path, **extra: str
) -> dict[str, str]:
    return imgbatch_env(
        tmp_path,
        IMGBATCH_REDIS_URL=broker.url,
        IMGBATCH_DATABASE_URL=db_url,
        IMGBATCH_MODEL=str(model_path),
        IMGBATCH_STALL_SECONDS="4",
        IMGBATCH_BATCH_SIZE="16",
        **extra,
    )


def _submit(env: dict[str, str], job_dir: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imgbatch", "submit", str(job_dir), *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(submit: subprocess.Popen[str], timeout: float = 300) -> tuple[str, str]:
    out, err = submit.communicate(timeout=timeout)
    assert submit.returncode == 0, err
    return out.strip().splitlines()[-1], err


def _assert_exactly_once(counter: JobCounter, job_id: str) -> None:
    images, rows, distinct, pending = counter.exactly_once(job_id)
    assert (images, rows, distinct, pending) == (JOB_IMAGES, JOB_IMAGES, JOB_IMAGES, 0)


def test_kill_9_of_a_pool_process_mid_batch(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, pg_url, model_path)
    worker = start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)
    submit = _submit(env, job_dir, "--wait")
    counter.wait_for_results(300)
    pool = children(worker.proc.pid)
    assert len(pool) == 2
    os.kill(pool[0], signal.SIGKILL)
    job_id, _ = _finish(submit)
    _assert_exactly_once(counter, job_id)
    log = worker.log()
    assert "WorkerLostError" in log or "SIGKILL" in log, log[-3000:]
    assert worker.proc.poll() is None, "the worker itself must survive losing a pool process"
    counter.close()


def test_kill_9_of_the_whole_worker_then_a_new_one(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, pg_url, model_path)
    first = start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)
    submit = _submit(env, job_dir, "--wait")
    counter.wait_for_results(400)
    os.killpg(first.proc.pid, signal.SIGKILL)  # the main process and its pool, mid-batch
    first.proc.wait()
    start_worker(env, concurrency=2)
    job_id, err = _finish(submit)
    _assert_exactly_once(counter, job_id)
    # The batches the dead worker held unacknowledged were noticed and sent again.
    assert "re-enqueueing" in err, err
    counter.close()


def test_redis_killed_and_restarted_empty_mid_job(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, pg_url, model_path)
    start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)
    submit = _submit(env, job_dir, "--wait")
    counter.wait_for_results(400)
    broker.stop()
    time.sleep(2)
    broker.start()  # empty: every queued and unacknowledged batch is gone
    job_id, err = _finish(submit)
    _assert_exactly_once(counter, job_id)
    assert "re-enqueueing" in err, err
    counter.close()


def test_database_unreachable_for_seconds_while_workers_write(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    pg_port = int(PG_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(pg_port)
    via_proxy = pg_url.replace(f":{pg_port}/", f":{proxy.port}/")
    env = _env(tmp_path, broker, via_proxy, model_path)
    worker = start_worker(env, concurrency=2)
    counter = JobCounter(pg_url)  # the test itself reads directly
    submit = _submit(env, job_dir, "--wait")
    counter.wait_for_results(400)
    before = counter.results()
    proxy.cut(5)
    time.sleep(5)
    job_id, _ = _finish(submit)
    _assert_exactly_once(counter, job_id)
    assert before < JOB_IMAGES
    assert "database unavailable" in worker.log(), "the outage never reached the workers"
    proxy.close()
    counter.close()


def test_producer_killed_mid_submit_then_rerun(
    tmp_path: Path, job_dir: Path, broker: RestartableRedis, pg_url: str, model_path: Path, start_worker: Any
) -> None:
    env = _env(tmp_path, broker, pg_url, model_path, IMGBATCH_MAX_IN_FLIGHT="5")
    queue = env.get("IMGBATCH_QUEUE_NAME", "imgbatch")
    submit = _submit(env, job_dir)  # no worker yet: back-pressure holds it after 5 batches
    deadline = time.monotonic() + 60
    while broker.queue_length(queue) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    lengths = []
    for _ in range(10):  # it stays blocked with a bounded queue
        lengths.append(broker.queue_length(queue))
        time.sleep(0.1)
    assert submit.poll() is None and max(lengths) == 5, lengths
    submit.kill()
    submit.wait()
    start_worker(env, concurrency=2)
    job_id, err = _finish(_submit(env, job_dir, "--wait"))
    assert "resuming unfinished job" in err, err
    counter = JobCounter(pg_url)
    _assert_exactly_once(counter, job_id)
    with counter.sessions() as s:
        from sqlalchemy import func, select

        from db.models import Job

        assert s.scalar(select(func.count()).select_from(Job)) == 1
    counter.close()
