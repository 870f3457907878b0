"""Reads of result rows: the filtered query, streaming in pages, the export columns.

Each function takes a Session (the caller owns it), runs only SELECTs and returns typed values: ORM
rows or frozen dataclasses. Whatever would need dialect-specific SQL (time bucketing, percentiles) is
done in Python on rows streamed from a portable query, so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from imgbatch.db.models import Image, ImageStatus, Result


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ResultFilter:
    """Filters of `imgbatch results`; any set on a result field leaves out images still pending."""

    label: str | None = None
    min_score: float | None = None
    status: ImageStatus | None = None
    path_glob: str | None = None  # matched against the whole path, `*` crosses directories

    def needs_result(self) -> bool:
        return (
            self.label is not None
            or self.min_score is not None
            or self.status in (ImageStatus.OK, ImageStatus.ERROR)
        )


def results_query(
    job_id: str, filters: ResultFilter, after_id: int, chunk: int, columns: Sequence[Any] = (Result,)
) -> Any:
    """One keyset page of a job's images (id, path, state, then `columns` of their result, None for
    an image still pending) matching `filters`, in image id order.

    With a result filter the query is driven by `results` and its (job_id, label, image_id),
    (job_id, status) and (job_id, score) indexes, so one label out of a million rows is an index
    range scan, not a table scan.
    """
    if filters.needs_result():
        stmt = (
            select(Image.id, Image.path, Image.state, *columns)
            .join(Result, Result.image_id == Image.id)
            .where(Result.job_id == job_id, Result.image_id > after_id)
            .order_by(Result.image_id)
        )
        if filters.label is not None:
            stmt = stmt.where(Result.label == filters.label)
        if filters.min_score is not None:
            stmt = stmt.where(Result.score >= filters.min_score)
        if filters.status is not None:
            stmt = stmt.where(Result.status == filters.status)
    else:
        stmt = (
            select(Image.id, Image.path, Image.state, *columns)
            .outerjoin(Result, Result.image_id == Image.id)
            .where(Image.job_id == job_id, Image.id > after_id)
            .order_by(Image.id)
        )
        if filters.status == ImageStatus.PENDING:
            stmt = stmt.where(Image.state == ImageStatus.PENDING)
    if filters.path_glob is not None:
        stmt = stmt.where(Image.path.like(_glob_to_like(filters.path_glob), escape="\\"))
    return stmt.limit(chunk)


def _glob_to_like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def iter_results(
    session: Session, job_id: str, filters: ResultFilter | None = None, chunk: int = 1000
) -> Iterator[Row[Any]]:
    """The job's images with their results (or none yet), in image order, streamed in chunks:
    memory stays constant however big the job."""
    for page in result_pages(session, job_id, filters, chunk):
        yield from page


# What `imgbatch results --format parquet` exports of each result, as plain columns: no ORM object
# per row, so a million rows cost tuples, not identity-mapped instances.
EXPORT_COLUMNS = (
    Result.status,
    Result.label,
    Result.class_index,
    Result.score,
    Result.error,
    Result.queue_ms,
    Result.decode_ms,
    Result.infer_ms,
    Result.persist_ms,
    Result.batch_size,
    Result.worker,
    Result.runtime,
    Result.model_sha256,
    Result.created_at,
    Result.top5,
)


def result_pages(
    session: Session,
    job_id: str,
    filters: ResultFilter | None = None,
    chunk: int = 1000,
    columns: Sequence[Any] = (Result,),
) -> Iterator[Sequence[Row[Any]]]:
    """The job's images (id, path, state, then `columns` of their result) in image order, one keyset
    page of at most `chunk` rows at a time: each page is an index range scan after the last id of
    the one before, never an OFFSET, so the millionth page costs what the first does."""
    filters = filters or ResultFilter()
    last_id = 0
    while rows := session.execute(results_query(job_id, filters, last_id, chunk, columns)).all():
        yield rows
        last_id = rows[-1].id


def result_count(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) or 0
