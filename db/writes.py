"""Every write of producer and worker. Each function takes a Session; the caller owns the transaction."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, Job, JobState, Result, utcnow
from db.reads import job_counts
from imgbatch.core.errors import UserError

# SQLite allows 32766 bound parameters per statement; stay well under it for multi-row inserts.
_INSERT_CHUNK = 2000


def create_job(
    session: Session, job_id: str, roots: Sequence[str], model_path: str, model_sha256: str, batch_size: int
) -> Job:
    job = Job(
        id=job_id, roots=list(roots), model_path=model_path, model_sha256=model_sha256, batch_size=batch_size
    )
    session.add(job)
    session.flush()
    return job


def add_images(session: Session, job_id: str, paths: Iterable[str]) -> int:
    """Record the job's images (idempotent on (job, path)); returns how many the job now has."""
    batch: list[dict[str, Any]] = []
    for path in paths:
        display, raw = printable_path(path)
        batch.append({"job_id": job_id, "path": display, "raw_path": raw, "state": ImageStatus.PENDING})
        if len(batch) >= _INSERT_CHUNK:
            _insert_ignore(session, Image, batch, ["job_id", "path"])
            batch = []
    if batch:
        _insert_ignore(session, Image, batch, ["job_id", "path"])
    total = session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) or 0
    session.execute(update(Job).where(Job.id == job_id).values(total_images=total))
    return total


def printable_path(path: str) -> tuple[str, bytes | None]:
    """(text for the database, exact bytes or None): os.walk gives undecodable names as surrogates."""
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.decode("utf-8", "backslashreplace"), raw


def finish_job_if_complete(session: Session, job_id: str) -> bool:
    """Mark the job done once no image is pending; returns whether it is done."""
    counts = job_counts(session, job_id)
    if counts.pending:
        return False
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state != JobState.DONE)
        .values(state=JobState.DONE, finished_at=utcnow())
    )
    return True


def save_results(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert a batch of results and move their images out of pending.

    Idempotent: a result that already exists for (job, image) is left as it was, so a batch
    redelivered after a worker died writes nothing twice.
    """
    if not rows:
        return
    _insert_ignore(session, Result, rows, ["job_id", "image_id"])
    for status in (ImageStatus.OK, ImageStatus.ERROR):
        ids = [r["image_id"] for r in rows if r["status"] == status]
        if ids:
            session.execute(
                update(Image)
                .where(Image.id.in_(ids), Image.state == ImageStatus.PENDING)
                .values(state=status)
            )


def set_persist_ms(session: Session, job_id: str, image_ids: list[int], per_image_ms: float) -> None:
    """Record the persist stage's time on rows this batch wrote (not on rows an earlier delivery wrote)."""
    session.execute(
        update(Result)
        .where(Result.job_id == job_id, Result.image_id.in_(image_ids), Result.persist_ms == 0.0)
        .values(persist_ms=per_image_ms)
    )


def _insert_ignore(session: Session, model: type[Any], rows: list[dict[str, Any]], keys: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(model).on_conflict_do_nothing(index_elements=keys)
        session.execute(pg_stmt, rows)
    elif dialect == "sqlite":
        lite_stmt = sqlite.insert(model).on_conflict_do_nothing(index_elements=keys)
        session.execute(lite_stmt, rows)
    else:
        raise UserError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")
