"""Record a job and its images, then feed batches of paths (never pixels) to the workers' queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from db.engine import ensure_schema, session_factory
from db.reads import find_unfinished_job, job_batch_size, job_counts
from db.writes import add_images, create_job
from imgbatch.core.errors import UserError
from imgbatch.core.modelfile import read_model_info
from imgbatch.core.settings import Settings
from producer.feeder import Feeder, Progress
from producer.scan import resolve_roots, scan
from worker.app import check_redis, create_app


@dataclass(frozen=True)
class Submitted:
    job_id: str
    images: int
    resumed: bool
    finished: int = 0  # images of a resumed job that already have their result


def record_job(
    directories: list[str | Path],
    model_path: Path,
    batch_size: int,
    engine: Engine,
    broker_url: str,
    new: bool = False,
) -> Submitted:
    """Create the job and its image rows in one transaction, or find the unfinished job to resume.

    Re-running the same submit after the producer was killed continues that job (same directories,
    same model, still running) instead of starting a second one, unless `new` is set.
    """
    roots = [str(r) for r in resolve_roots(directories)]
    info = read_model_info(model_path)
    check_redis(broker_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    if not new:
        with sessions.begin() as session:
            found = find_unfinished_job(session, roots, info.graph_sha256)
            if found is not None:
                counts = job_counts(session, found.id)
                return Submitted(found.id, counts.total, resumed=True, finished=counts.finished)
    job_id = uuid.uuid4().hex
    with sessions.begin() as session:
        create_job(session, job_id, roots, str(model_path.resolve()), info.graph_sha256, batch_size)
        total = add_images(session, job_id, scan([Path(r) for r in roots]))
        if total == 0:
            # Rolled back with the transaction: an empty job is never recorded.
            raise UserError(f"no images found in {', '.join(roots)}")
    return Submitted(job_id, total, resumed=False)


def feed(
    settings: Settings,
    engine: Engine,
    job_id: str,
    broker_url: str,
    wait: bool,
    on_progress: Progress | None = None,
) -> None:
    """Send the job's pending images with back-pressure; with `wait`, until none is pending."""
    with session_factory(engine)() as session:
        batch_size = job_batch_size(session, job_id)
    Feeder(create_app(settings, broker_url), engine, job_id, batch_size).run(wait, on_progress)
