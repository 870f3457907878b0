"""Reads of a job's images: the batches the dispatcher sends, the images a batch names, error rows.

Each function takes a Session (the caller owns it), runs only SELECTs and returns typed values: ORM
rows or frozen dataclasses. Whatever would need dialect-specific SQL (time bucketing, percentiles) is
done in Python on rows streamed from a portable query, so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from imgbatch.db.models import Image, ImageStatus, Result


# ---------------------------------------------------------------------------- images
def next_image_batch(
    session: Session, job_id: str, after_id: int, batch_size: int, state: ImageStatus = ImageStatus.PENDING
) -> list[tuple[int, str]]:
    """Up to `batch_size` (id, stored path) pairs of the job's images in `state` with id > `after_id`."""
    rows = session.execute(
        select(Image.id, Image.path)
        .where(Image.job_id == job_id, Image.state == state, Image.id > after_id)
        .order_by(Image.id)
        .limit(batch_size)
    ).all()
    return [(r.id, r.path) for r in rows]


def iter_image_batches(
    session: Session, job_id: str, batch_size: int, state: ImageStatus = ImageStatus.PENDING
) -> Iterator[list[tuple[int, str]]]:
    """(id, stored path) pairs of the job's images in `state`, in id order, `batch_size` at a time."""
    last_id = 0
    while batch := next_image_batch(session, job_id, last_id, batch_size, state):
        yield batch
        last_id = batch[-1][0]


class KnownImage(NamedTuple):
    path: str  # as stored (imgbatch.core.names)
    state: ImageStatus
    size_bytes: int | None  # from the listing of an object store; None for files


def job_images(session: Session, job_id: str, image_ids: list[int]) -> dict[int, KnownImage]:
    """{id: (stored path, state, listed size)} of those of `image_ids` that belong to the job."""
    rows = session.execute(
        select(Image.id, Image.path, Image.state, Image.size_bytes).where(
            Image.job_id == job_id, Image.id.in_(image_ids)
        )
    ).all()
    return {r.id: KnownImage(r.path, ImageStatus(r.state), r.size_bytes) for r in rows}


def error_image_ids(
    session: Session, job_id: str, reason: str | None, after_id: int, limit: int
) -> list[int]:
    """Ids of the job's images with an error row (whose error starts with `reason`, when given)."""
    stmt = select(Result.image_id).where(
        Result.job_id == job_id, Result.status == ImageStatus.ERROR, Result.image_id > after_id
    )
    if reason:
        stmt = stmt.where(Result.error.startswith(reason, autoescape=True))
    return list(session.scalars(stmt.order_by(Result.image_id).limit(limit)))
