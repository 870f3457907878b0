"""Poison inputs with nobody waiting: a file whose decoding really kills the pool process, a read that
never returns, a FIFO swapped in after the scan, and one batch delivered to two workers at once. Each
job reaches `done` by itself; the poison file gets an error row saying what happened; the rest of its
batch is classified."""

from __future__ import annotations

import os
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import imgbatch_env, run_cli
from faults import HangMount, JobCounter, RestartableRedis, record_fault, wait_done
from imgbatch.core.samples import make_variants
from imgbatch.db.models import Image, Result

pytestmark = pytest.mark.slow
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def _env(
    tmp_path: Path, broker: RestartableRedis, db_url: str, model_path: Path, **extra: str
) -> dict[str, str]:
    fast = {
        "IMGBATCH_HEARTBEAT_TTL_S": "2",
        "IMGBATCH_LEASE_TTL_S": "2",
        "IMGBATCH_DISPATCH_INTERVAL_S": "0.25",
        "IMGBATCH_STALL_SECONDS": "3",
        "IMGBATCH_BATCH_SIZE": "16",
    }
    return imgbatch_env(
        tmp_path,
        IMGBATCH_REDIS_URL=broker.url,
        IMGBATCH_DATABASE_URL=db_url,
        IMGBATCH_MODEL=str(model_path),
        **{**fast, **extra},
    )


def _submit(env: dict[str, str], directory: Path) -> str:
    proc = run_cli(["submit", str(directory)], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _done(fault: str, counter: JobCounter, job_id: str, images: int) -> dict[str, str | None]:
    """Wait until the job is done by itself; exactly one row per image; {file name: error}."""
    seconds = wait_done(counter, job_id)
    assert record_fault(fault, "SQLite", counter, job_id, seconds) == (images, images, images, 0)
    return _errors(counter, job_id)


def _errors(counter: JobCounter, job_id: str) -> dict[str, str | None]:
    with counter.sessions() as s:
        rows = s.execute(
            select(Image.path, Result.error)
            .join(Result, Result.image_id == Image.id)
            .where(Image.job_id == job_id)
        ).all()
    return {os.path.basename(path): error for path, error in rows}


def _zero_rgba_png(path: Path, side: int) -> None:
    """An RGBA PNG of side x side zero pixels: tiny on disk, side * side * 4 bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 4 * side)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _memory(cgroup: Path, name: str) -> str:
    return (cgroup / name).read_text().strip()


def test_a_file_that_gets_the_pool_process_killed_by_the_oom_killer(
    tmp_path: Path, broker: RestartableRedis, model_path: Path, start_worker: Any
) -> None:
    """The worker runs in a memory cgroup (v1) whose limit leaves 250 MB above its idle use; one file
    decodes to 400 MB. The kernel's OOM killer sends the pool process SIGKILL (no MemoryError: the
    allocation succeeds, touching the pages fails), three times; then the file gets its error row."""
    photos = tmp_path / "photos"
    make_variants(photos, 40, seed=5, min_side=160, max_side=400)
    _zero_rgba_png(photos / "poison.png", 10_000)
    cgroup = MEMORY_CGROUPS / f"imgbatch-test-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    db_url = f"sqlite:///{tmp_path / 'poison.db'}"
    env = _env(tmp_path, broker, db_url, model_path, IMGBATCH_MAX_PIXELS="200000000")
    try:
        prefix = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"]
        worker = start_worker(env, concurrency=1, prefix=prefix)
        limit = int(_memory(cgroup, "memory.usage_in_bytes")) + 250 * 2**20
        (cgroup / "memory.limit_in_bytes").write_text(str(limit))
        counter = JobCounter(db_url)
        job_id = _submit(env, photos)
        errors = _done("pool process OOM-killed by one file (memory cgroup)", counter, job_id, 41)
        assert errors["poison.png"] == "worker process killed while decoding (3 times)"
        assert all(error is None for name, error in errors.items() if name != "poison.png")
        oom = dict(line.split() for line in _memory(cgroup, "memory.oom_control").splitlines())
        print(f"memory cgroup limit {limit / 2**20:.0f} MB, oom_kill {oom.get('oom_kill')}")
        assert int(oom.get("oom_kill", "3")) >= 3 and worker.proc.poll() is None
        counter.close()
    finally:
        worker.stop()
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_a_read_that_never_returns_and_a_fifo_swapped_in_after_the_scan(
    tmp_path: Path, broker: RestartableRedis, model_path: Path, start_worker: Any
) -> None:
    """`stuck/hang.jpg` is on a FUSE mount whose read never returns: no signal but SIGKILL ends it, so
    Celery's hard time limit kills the pool process, and the marker's age says it timed out: an error
    row at once (a second reader of that page would wait uninterruptibly, its process wedged for
    good). `swap.jpg` becomes a FIFO after the scan: refused at once, without blocking."""
    photos = tmp_path / "photos"
    make_variants(photos, 30, seed=6, min_side=160, max_side=400)
    make_variants(tmp_path / "one", 1, seed=7, min_side=160, max_side=400)
    os.replace(next((tmp_path / "one").iterdir()), photos / "swap.jpg")
    mount = HangMount(photos / "stuck", ["hang.jpg!"])
    db_url = f"sqlite:///{tmp_path / 'hang.db'}"
    env = _env(
        tmp_path,
        broker,
        db_url,
        model_path,
        IMGBATCH_IMAGE_TIMEOUT_S="1",
        IMGBATCH_TASK_SOFT_TIME_LIMIT_S="2",
        IMGBATCH_TASK_TIME_LIMIT_S="3",
    )
    try:
        job_id = _submit(env, photos)  # no worker yet
        (photos / "swap.jpg").unlink()
        os.mkfifo(photos / "swap.jpg")
        worker = start_worker(env, concurrency=1)
        counter = JobCounter(db_url)
        errors = _done("read never returns (FUSE) + FIFO swapped in", counter, job_id, 32)
        assert errors["hang.jpg"] == "timed out after 1 s"
        assert errors["swap.jpg"] == "not a regular file"
        assert sum(error is None for error in errors.values()) == 30
        assert worker.log().count("Hard time limit") == 1
        counter.close()
    finally:
        mount.close()


def test_the_same_batch_processed_at_once_by_two_workers(
    tmp_path: Path, broker: RestartableRedis, model_path: Path, start_worker: Any
) -> None:
    photos = tmp_path / "photos"
    make_variants(photos, 64, seed=8, min_side=160, max_side=400)
    db_url = f"sqlite:///{tmp_path / 'twice.db'}"
    env = _env(tmp_path, broker, db_url, model_path, IMGBATCH_MAX_IN_FLIGHT="1")
    job_id = _submit(env, photos)  # no worker yet: nothing is sent
    counter = JobCounter(db_url)
    with counter.sessions() as s:
        items = [[i, p] for i, p in s.execute(select(Image.id, Image.path).where(Image.job_id == job_id))]
    from imgbatch.core.settings import Settings
    from imgbatch.worker.app import TASK_CLASSIFY, create_app

    app = create_app(Settings(redis_url=broker.url, queue_name=env.get("IMGBATCH_QUEUE_NAME", "imgbatch")))
    for _ in range(2):  # one batch of all 64 images, delivered twice
        kwargs = {"job_id": job_id, "items": items, "enqueued_at": time.time(), "batch_id": "dup"}
        app.send_task(TASK_CLASSIFY, kwargs=kwargs, queue=app.settings.queue_name)
    workers = [start_worker(env, concurrency=1, wait=False) for _ in range(2)]
    _done("one batch delivered to two workers at once", counter, job_id, 64)
    assert all("received" in w.log() for w in workers), [w.log()[-2000:] for w in workers]
    counter.close()
