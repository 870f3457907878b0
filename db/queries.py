"""Queries shared by producer, worker and CLI. Each takes a Session; the caller commits."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Image, ImageState, Job, JobState, Result, utcnow
from imgbatch.errors import UserError

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
        batch.append({"job_id": job_id, "path": display, "raw_path": raw, "state": ImageState.PENDING})
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


def next_image_batch(
    session: Session, job_id: str, after_id: int, batch_size: int, state: str = ImageState.PENDING
) -> list[tuple[int, str]]:
    """Up to `batch_size` (id, openable path) pairs of the job's images in `state` with id > `after_id`."""
    rows = session.execute(
        select(Image.id, Image.path, Image.raw_path)
        .where(Image.job_id == job_id, Image.state == state, Image.id > after_id)
        .order_by(Image.id)
        .limit(batch_size)
    ).all()
    return [(r.id, os.fsdecode(r.raw_path) if r.raw_path is not None else r.path) for r in rows]


def iter_image_batches(
    session: Session, job_id: str, batch_size: int, state: str = ImageState.PENDING
) -> Iterator[list[tuple[int, str]]]:
    """(id, openable path) pairs of the job's images in `state`, in id order, `batch_size` at a time."""
    last_id = 0
    while batch := next_image_batch(session, job_id, last_id, batch_size, state):
        yield batch
        last_id = batch[-1][0]


def get_job(session: Session, job_ref: str) -> Job:
    """A job by id, unique id prefix, or ``latest``; UserError if there is none."""
    if job_ref == "latest":
        job = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(1)).first()
        if job is None:
            raise UserError("no jobs yet: submit one with `imgbatch run DIR` or `imgbatch submit DIR`")
        return job
    job = session.get(Job, job_ref)
    if job is not None:
        return job
    matches = session.scalars(select(Job).where(Job.id.like(f"{job_ref}%")).limit(2)).all()
    if len(matches) == 1:
        return matches[0]
    raise UserError(f"no job {job_ref!r}" if not matches else f"job id prefix {job_ref!r} is ambiguous")


@dataclass(frozen=True)
class JobCounts:
    total: int
    pending: int
    done: int
    error: int

    @property
    def finished(self) -> int:
        return self.done + self.error


def job_counts(session: Session, job_id: str) -> JobCounts:
    rows = session.execute(
        select(Image.state, func.count()).where(Image.job_id == job_id).group_by(Image.state)
    ).all()
    by_state = {state: n for state, n in rows}
    return JobCounts(
        total=sum(by_state.values()),
        pending=by_state.get(ImageState.PENDING, 0),
        done=by_state.get(ImageState.DONE, 0),
        error=by_state.get(ImageState.ERROR, 0),
    )


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


def job_image_paths(session: Session, job_id: str, image_ids: list[int]) -> dict[int, str]:
    """Openable paths of those of `image_ids` that belong to the job."""
    rows = session.execute(
        select(Image.id, Image.path, Image.raw_path).where(Image.job_id == job_id, Image.id.in_(image_ids))
    ).all()
    return {r.id: os.fsdecode(r.raw_path) if r.raw_path is not None else r.path for r in rows}


def find_unfinished_job(session: Session, roots: Sequence[str], model_sha256: str) -> Job | None:
    """The newest running job over exactly these directories with this model, to resume after a crash."""
    candidates = session.scalars(
        select(Job)
        .where(Job.state == JobState.RUNNING, Job.model_sha256 == model_sha256)
        .order_by(Job.created_at.desc())
    )
    return next((job for job in candidates if sorted(job.roots) == sorted(roots)), None)


def job_roots(session: Session, job_id: str) -> list[str] | None:
    roots = session.scalar(select(Job.roots).where(Job.id == job_id))
    return list(roots) if roots is not None else None


def save_results(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert a batch of results and move their images out of pending.

    Idempotent: a result that already exists for (job, image) is left as it was, so a batch
    redelivered after a worker died writes nothing twice.
    """
    if not rows:
        return
    _insert_ignore(session, Result, rows, ["job_id", "image_id"])
    for state in (ImageState.DONE, ImageState.ERROR):
        ids = [r["image_id"] for r in rows if (r["status"] == "ok") == (state == ImageState.DONE)]
        if ids:
            session.execute(
                update(Image).where(Image.id.in_(ids), Image.state == ImageState.PENDING).values(state=state)
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


@dataclass(frozen=True)
class ResultFilter:
    """Filters of `imgbatch results`; any set on a result field leaves out images still pending."""

    label: str | None = None
    min_score: float | None = None
    status: str | None = None  # "ok", "error" or "pending"
    path_glob: str | None = None  # matched against the whole path, `*` crosses directories

    def needs_result(self) -> bool:
        return self.label is not None or self.min_score is not None or self.status in ("ok", "error")


def results_query(job_id: str, filters: ResultFilter, after_id: int, chunk: int) -> Any:
    """One keyset page of a job's images (with results) matching `filters`, in image id order.

    With a result filter the query is driven by `results` and its (job_id, label, image_id),
    (job_id, status) and (job_id, score) indexes, so one label out of a million rows is an index
    range scan, not a table scan.
    """
    if filters.needs_result():
        stmt = (
            select(Image.id, Image.path, Image.state, Result)
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
            select(Image.id, Image.path, Image.state, Result)
            .outerjoin(Result, Result.image_id == Image.id)
            .where(Image.job_id == job_id, Image.id > after_id)
            .order_by(Image.id)
        )
        if filters.status == ImageState.PENDING:
            stmt = stmt.where(Image.state == ImageState.PENDING)
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
    filters = filters or ResultFilter()
    last_id = 0
    while True:
        rows = session.execute(results_query(job_id, filters, last_id, chunk)).all()
        if not rows:
            return
        yield from rows  # type: ignore[misc]
        last_id = rows[-1].id


@dataclass(frozen=True)
class JobRow:
    job: Job
    counts: JobCounts
    images_per_second: float | None


def list_jobs(session: Session, limit: int = 20) -> list[JobRow]:
    """The most recent jobs with their counts and throughput (creation to last result)."""
    jobs = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)).all()
    out = []
    for job in jobs:
        counts = job_counts(session, job.id)
        _, last = job_throughput(session, job.id)
        rate = None
        if last is not None and counts.finished:
            seconds = (_aware(last) - _aware(job.created_at)).total_seconds()
            rate = counts.finished / seconds if seconds > 0 else None
        out.append(JobRow(job, counts, rate))
    return out


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def top_labels(session: Session, job_id: str, limit: int = 5) -> list[tuple[str, int]]:
    rows = session.execute(
        select(Result.label, func.count().label("n"))
        .where(Result.job_id == job_id, Result.status == "ok")
        .group_by(Result.label)
        .order_by(func.count().desc(), Result.label)
        .limit(limit)
    ).all()
    return [(str(label), int(n)) for label, n in rows]


def job_throughput(session: Session, job_id: str) -> tuple[datetime | None, datetime | None]:
    """First and last result time of a job: the span over which images/s is measured."""
    first, last = session.execute(
        select(func.min(Result.created_at), func.max(Result.created_at)).where(Result.job_id == job_id)
    ).one()
    return first, last
