"""Reads about jobs: finding one by reference, its counts and summary, the active ones.

Each function takes a Session (the caller owns it), runs only SELECTs and returns typed values: ORM
rows or frozen dataclasses. Whatever would need dialect-specific SQL (time bucketing, percentiles) is
done in Python on rows streamed from a portable query, so the same code runs on SQLite and PostgreSQL.
A job that is not there raises NotFound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imgbatch.db.models import ACTIVE_STATES, Image, ImageStatus, Job, JobState, Result


class NotFound(LookupError):
    """No job matches the reference; the message says which and what to do."""


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC), PostgreSQL aware ones: make both aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------------------- jobs
MIN_PREFIX = 4


def find_job(session: Session, job_ref: str) -> Job:
    """A job by id, unique id prefix (MIN_PREFIX+ characters), or ``latest``; NotFound if none."""
    if job_ref == "latest":
        job = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(1)).first()
        if job is None:
            raise NotFound("no jobs yet: submit one with `imgbatch run DIR` or `imgbatch submit DIR`")
        return job
    if not job_ref.strip():
        raise NotFound(
            "no job id given: pass a job id, a unique prefix of at least 4 characters, or `latest`"
        )
    job = session.get(Job, job_ref)
    if job is not None:
        return job
    if len(job_ref) < MIN_PREFIX:
        raise NotFound(
            f"job id prefix {job_ref!r} is too short: give at least {MIN_PREFIX} characters, "
            "the full id, or `latest`"
        )
    matches = session.scalars(select(Job).where(Job.id.startswith(job_ref, autoescape=True)).limit(2)).all()
    if len(matches) == 1:
        return matches[0]
    raise NotFound(f"no job {job_ref!r}" if not matches else f"job id prefix {job_ref!r} is ambiguous")


@dataclass(frozen=True)
class JobCounts:
    total: int
    pending: int
    ok: int
    error: int

    @property
    def finished(self) -> int:
        return self.ok + self.error


def job_counts(session: Session, job_id: str) -> JobCounts:
    rows = session.execute(
        select(Image.state, func.count()).where(Image.job_id == job_id).group_by(Image.state)
    ).all()
    by_status = {status: n for status, n in rows}
    return JobCounts(
        total=sum(by_status.values()),
        pending=by_status.get(ImageStatus.PENDING, 0),
        ok=by_status.get(ImageStatus.OK, 0),
        error=by_status.get(ImageStatus.ERROR, 0),
    )


@dataclass(frozen=True)
class WorkerCount:
    worker: str  # "host:pid"
    images: int


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    state: JobState
    created_at: datetime
    finished_at: datetime | None
    roots: list[str]
    model_path: str
    model_sha256: str
    counts: JobCounts
    first_result_at: datetime | None
    last_result_at: datetime | None
    # Hashes recorded on the result rows (normally exactly the job's model).
    result_model_sha256s: list[str]
    workers: list[WorkerCount]

    @property
    def total(self) -> int:
        return self.counts.total

    @property
    def ok(self) -> int:
        return self.counts.ok

    @property
    def error(self) -> int:
        return self.counts.error

    @property
    def pending(self) -> int:
        return self.counts.pending

    @property
    def results(self) -> int:
        return self.counts.finished

    @property
    def seconds(self) -> float:
        """From the job's creation to its last result: what the user waited for."""
        if self.last_result_at is None:
            return 0.0
        return max(0.0, (self.last_result_at - self.created_at).total_seconds())

    @property
    def images_per_second(self) -> float | None:
        return self.results / self.seconds if self.seconds > 0 else None


def job_summary(session: Session, job_id: str) -> JobSummary:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return _summary(session, job)


def _summary(session: Session, job: Job) -> JobSummary:
    first, last = session.execute(
        select(func.min(Result.created_at), func.max(Result.created_at)).where(Result.job_id == job.id)
    ).one()
    shas = session.scalars(
        select(Result.model_sha256).where(Result.job_id == job.id).group_by(Result.model_sha256)
    ).all()
    workers = session.execute(
        select(Result.worker, func.count().label("n"))
        .where(Result.job_id == job.id)
        .group_by(Result.worker)
        .order_by(func.count().desc(), Result.worker)
    ).all()
    return JobSummary(
        job_id=job.id,
        state=job.state,
        created_at=as_utc(job.created_at),
        finished_at=as_utc(job.finished_at) if job.finished_at else None,
        roots=[str(r) for r in job.roots],
        model_path=job.model_path,
        model_sha256=job.model_sha256,
        counts=job_counts(session, job.id),
        first_result_at=as_utc(first) if first else None,
        last_result_at=as_utc(last) if last else None,
        result_model_sha256s=sorted(str(s) for s in shas),
        workers=[WorkerCount(str(w), int(n)) for w, n in workers],
    )


def list_jobs(session: Session, limit: int = 20) -> list[JobSummary]:
    """The most recent jobs, newest first, with their counts and throughput."""
    jobs = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)).all()
    return [_summary(session, job) for job in jobs]


@dataclass(frozen=True)
class JobSource:
    """What a worker needs to know of a job: where it may read, and which model it wants."""

    roots: list[str]
    model_path: str
    model_sha256: str


def job_source(session: Session, job_id: str) -> JobSource | None:
    row = session.execute(
        select(Job.roots, Job.model_path, Job.model_sha256).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else JobSource([str(r) for r in row.roots], row.model_path, row.model_sha256)


def find_unfinished_job(session: Session, roots: Sequence[str], model_sha256: str) -> Job | None:
    """The newest scanning or running job over exactly these directories with this model, to resume
    after a crash."""
    candidates = session.scalars(
        select(Job)
        .where(Job.state.in_(ACTIVE_STATES), Job.model_sha256 == model_sha256)
        .order_by(Job.created_at.desc())
    )
    return next((job for job in candidates if sorted(job.roots) == sorted(roots)), None)


@dataclass(frozen=True)
class ActiveJob:
    job_id: str
    state: JobState
    batch_size: int


def active_jobs(session: Session) -> list[ActiveJob]:
    """Jobs whose images are still to be sent (scanning or running), oldest first."""
    rows = session.execute(
        select(Job.id, Job.state, Job.batch_size)
        .where(Job.state.in_(ACTIVE_STATES))
        .order_by(Job.created_at, Job.id)
    ).all()
    return [ActiveJob(r.id, JobState(r.state), r.batch_size) for r in rows]


def job_state(session: Session, job_id: str) -> JobState | None:
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    return None if state is None else JobState(state)


def has_pending(session: Session, job_id: str) -> bool:
    """Whether any image of the job is pending (an index probe, however big the job)."""
    stmt = select(Image.id).where(Image.job_id == job_id, Image.state == ImageStatus.PENDING).limit(1)
    return session.scalar(stmt) is not None


def job_batch_size(session: Session, job_id: str) -> int:
    size = session.scalar(select(Job.batch_size).where(Job.id == job_id))
    if size is None:
        raise NotFound(f"no job {job_id!r}")
    return size
