"""Record a job and its images, then enqueue batches of paths (never pixels)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from db.engine import ensure_schema, session_factory
from db.models import ImageState
from db.queries import add_images, create_job, finish_job_if_complete, iter_image_batches, job_counts
from imgbatch.errors import UserError
from imgbatch.modelfile import read_model_info
from producer.scan import resolve_roots, scan
from worker.app import TASK_CLASSIFY, app, check_redis


@dataclass(frozen=True)
class Submitted:
    job_id: str
    images: int
    batches: int


def submit(
    directories: list[str | Path], model_path: Path, batch_size: int, engine: Engine, broker_url: str
) -> Submitted:
    roots = resolve_roots(directories)
    info = read_model_info(model_path)
    check_redis(broker_url)
    app.conf.broker_url = broker_url
    ensure_schema(engine)
    job_id = uuid.uuid4().hex
    sessions = session_factory(engine)
    with sessions.begin() as session:
        create_job(
            session, job_id, [str(r) for r in roots], str(model_path.resolve()), info.graph_sha256, batch_size
        )
        total = add_images(session, job_id, scan(roots))
        if total == 0:
            # Rolled back with the transaction: an empty job is never recorded.
            raise UserError(f"no images found in {', '.join(str(r) for r in roots)}")
    batches = enqueue_pending(engine, job_id, batch_size)
    return Submitted(job_id, total, batches)


def enqueue_pending(engine: Engine, job_id: str, batch_size: int) -> int:
    """Send every still-pending image of the job to the queue in batches; returns the batch count."""
    sessions = session_factory(engine)
    sent = 0
    with sessions() as session, app.producer_or_acquire() as prod:
        for batch in iter_image_batches(session, job_id, batch_size, ImageState.PENDING):
            app.send_task(
                TASK_CLASSIFY,
                kwargs={"job_id": job_id, "items": [[i, p] for i, p in batch], "enqueued_at": time.time()},
                producer=prod,
                serializer="json",
            )
            sent += 1
    return sent


def wait(
    engine: Engine,
    job_id: str,
    on_progress: Callable[[int, int], None] | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> None:
    """Block until no image of the job is pending; `on_progress(finished, total)` after each poll."""
    sessions = session_factory(engine)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with sessions.begin() as session:
            counts = job_counts(session, job_id)
            if on_progress:
                on_progress(counts.finished, counts.total)
            if counts.pending == 0:
                finish_job_if_complete(session, job_id)
                return
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"job {job_id} still has {counts.pending} pending images after {timeout_s:.0f} s")
        time.sleep(poll_s)
