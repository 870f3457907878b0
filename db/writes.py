"""Every write of producer, workers and commands. Each function takes a Session; the caller owns the
transaction. Work on many rows (deleting or retrying a job) is done a chunk per call, so the caller
commits each chunk in its own short transaction."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from imgbatch.core.errors import UserError
from imgbatch.core.names import encode_path
from imgbatch.db.images import error_image_ids
from imgbatch.db.jobs import has_pending
from imgbatch.db.models import ACTIVE_STATES, Image, ImageStatus, Job, JobState, Result, utcnow

# SQLite allows 32766 bound parameters per statement; stay well under it for multi-row inserts.
_INSERT_CHUNK = 2000


def create_job(
    session: Session, job_id: str, roots: Sequence[str], model_path: str, model_sha256: str, batch_size: int
) -> Job:
    """A new job, SCANNING until `mark_scanned`; `roots` are stored encoded (imgbatch.core.names)."""
    job = Job(
        id=job_id,
        roots=[encode_path(r) for r in roots],
        model_path=model_path,
        model_sha256=model_sha256,
        batch_size=batch_size,
        state=JobState.SCANNING,
    )
    session.add(job)
    session.flush()
    return job


def insert_images(
    session: Session, job_id: str, paths: Iterable[str | bytes], sizes: Iterable[int | None] | None = None
) -> None:
    """Record file names (or object URLs) as pending images of the job, with the size their listing
    gave when it gave one; a name already recorded is skipped."""
    batch: list[dict[str, Any]] = []
    for path, size in zip(paths, itertools.repeat(None) if sizes is None else sizes, strict=False):
        batch.append(
            {"job_id": job_id, "path": encode_path(path), "state": ImageStatus.PENDING, "size_bytes": size}
        )
        if len(batch) >= _INSERT_CHUNK:
            _insert_ignore(session, Image, batch, ["job_id", "path"])
            batch = []
    if batch:
        _insert_ignore(session, Image, batch, ["job_id", "path"])


def count_images(session: Session, job_id: str) -> int:
    """Store and return how many images the job has."""
    total = session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) or 0
    session.execute(update(Job).where(Job.id == job_id).values(total_images=total))
    return total


def add_images(session: Session, job_id: str, paths: Iterable[str | bytes]) -> int:
    """Record the job's images (idempotent on (job, path)); returns how many the job now has."""
    insert_images(session, job_id, paths)
    return count_images(session, job_id)


def mark_scanned(session: Session, job_id: str) -> bool:
    """SCANNING -> RUNNING once the scan is over; False when the job was cancelled meanwhile."""
    return _changed(
        session,
        update(Job).where(Job.id == job_id, Job.state == JobState.SCANNING).values(state=JobState.RUNNING),
    )


def finish_job_if_complete(session: Session, job_id: str) -> bool:
    """Mark a RUNNING job DONE once no image is pending; returns whether it is done.

    The job row is locked first (PostgreSQL: SELECT ... FOR NO KEY UPDATE; SQLite serializes writers
    anyway): two last batches committing at once would otherwise each count the other's images as
    pending under READ COMMITTED, and neither would finish the job. NO KEY UPDATE, not UPDATE: each
    batch's result rows already hold a KEY SHARE lock on the job row (their foreign key), which FOR
    UPDATE would wait for, each transaction on the other's: a deadlock.
    """
    state = session.scalar(select(Job.state).where(Job.id == job_id).with_for_update(key_share=True))
    if state == JobState.DONE:
        return True
    if state != JobState.RUNNING or has_pending(session, job_id):
        return False
    session.execute(update(Job).where(Job.id == job_id).values(state=JobState.DONE, finished_at=utcnow()))
    return True


def cancel_job(session: Session, job_id: str) -> bool:
    """Stop sending the job's pending images; False when it was not scanning or running."""
    return _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_(ACTIVE_STATES))
        .values(state=JobState.CANCELLED, finished_at=utcnow()),
    )


def delete_job_chunk(session: Session, job_id: str, limit: int = 1000) -> int:
    """Delete up to `limit` of the job's images with their results; the job row itself once none is
    left. Returns how many images were deleted (0: the job is gone). Writes come first, so a SQLite
    transaction takes the write lock at once instead of upgrading a read."""
    first = select(Image.id).where(Image.job_id == job_id).order_by(Image.id).limit(limit)
    session.execute(
        delete(Result).where(Result.job_id == job_id, Result.image_id.in_(first.scalar_subquery()))
    )
    deleted = _rowcount(session, delete(Image).where(Image.id.in_(first.scalar_subquery())))
    if not deleted:
        session.execute(delete(Job).where(Job.id == job_id))
    return deleted


def retry_chunk(
    session: Session, job_id: str, reason: str | None, after_id: int, limit: int = 1000
) -> tuple[int, int]:
    """Turn up to `limit` error rows (error starting with `reason`, when given) of images after
    `after_id` back into pending images, and the job back to RUNNING. Returns (the last image id
    retried, how many): call again from that id until the count is 0."""
    # In the same transaction as the images it makes pending: the job is never RUNNING with none
    # pending because of a retry. First, so a SQLite transaction takes the write lock at once.
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.DONE)
        .values(state=JobState.RUNNING, finished_at=None)
    )
    ids = error_image_ids(session, job_id, reason, after_id, limit)
    if not ids:
        return after_id, 0
    session.execute(delete(Result).where(Result.job_id == job_id, Result.image_id.in_(ids)))
    session.execute(update(Image).where(Image.id.in_(ids)).values(state=ImageStatus.PENDING))
    return ids[-1], len(ids)


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


def _rowcount(session: Session, statement: Any) -> int:
    return int(cast(CursorResult[Any], session.execute(statement)).rowcount or 0)


def _changed(session: Session, statement: Any) -> bool:
    return _rowcount(session, statement) > 0


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
