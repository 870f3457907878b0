"""Every read of the database, for commands, reports, producer and workers alike.

Each function takes a Session (the caller owns it), runs only SELECTs and returns typed values: ORM
rows or frozen dataclasses. A job that is not there raises NotFound. Whatever would need
dialect-specific SQL (time bucketing, percentiles) is done in Python on rows streamed from a portable
query, so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session, aliased

from imgbatch.core.names import open_path
from imgbatch.db.models import ACTIVE_STATES, Image, ImageStatus, Job, JobState, Result

STAGES = ("queue_ms", "decode_ms", "infer_ms", "persist_ms")
_STAGE_COLUMNS = {
    "queue_ms": Result.queue_ms,
    "decode_ms": Result.decode_ms,
    "infer_ms": Result.infer_ms,
    "persist_ms": Result.persist_ms,
}


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


# ---------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelCount:
    label: str
    count: int
    mean_score: float
    min_score: float


def label_histogram(session: Session, job_id: str, limit: int | None = None) -> list[LabelCount]:
    """Every predicted label of the job's successful results, largest group first."""
    n = func.count().label("n")
    stmt = (
        select(Result.label, n, func.avg(Result.score), func.min(Result.score))
        .where(Result.job_id == job_id, Result.status == ImageStatus.OK)
        .group_by(Result.label)
        .order_by(n.desc(), Result.label)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        LabelCount(str(label), int(count), float(mean or 0.0), float(low or 0.0))
        for label, count, mean, low in session.execute(stmt).all()
    ]


@dataclass(frozen=True)
class ScoredImage:
    image_id: int
    path: str
    label: str
    score: float
    # [[class_index, label, score], ...] best first.
    top5: list[Any] = field(default_factory=list)
    # The name to open (`path` decoded to the file's exact bytes).
    file: str = ""


def _scored(row: Any) -> ScoredImage:
    return ScoredImage(
        int(row.image_id),
        str(row.path),
        str(row.label),
        float(row.score or 0.0),
        list(row.top5 or []),
        open_path(str(row.path)),
    )


def label_samples(
    session: Session, job_id: str, labels: Sequence[str], per_label: int = 12
) -> dict[str, list[ScoredImage]]:
    """Up to `per_label` images of each of `labels`, most confident first (a window function:
    one query, fine on SQLite >= 3.25 and PostgreSQL)."""
    if not labels or per_label <= 0:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=Result.label, order_by=(Result.score.desc(), Result.image_id))
        .label("rank")
    )
    ranked = (
        select(Result.image_id, Image.path, Result.label, Result.score, Result.top5, rank)
        .join(Image, Image.id == Result.image_id)
        .where(Result.job_id == job_id, Result.status == ImageStatus.OK, Result.label.in_(list(labels)))
        .subquery()
    )
    rows = session.execute(
        select(ranked).where(ranked.c.rank <= per_label).order_by(ranked.c.label, ranked.c.rank)
    ).all()
    out: dict[str, list[ScoredImage]] = {label: [] for label in labels}
    for row in rows:
        out[str(row.label)].append(_scored(row))
    return out


def lowest_confidence(session: Session, job_id: str, limit: int = 24) -> list[ScoredImage]:
    """The successful results the model was least sure of, least confident first."""
    rows = session.execute(
        select(Result.image_id, Image.path, Result.label, Result.score, Result.top5)
        .join(Image, Image.id == Result.image_id)
        .where(Result.job_id == job_id, Result.status == ImageStatus.OK)
        .order_by(Result.score.asc(), Result.image_id)
        .limit(limit)
    ).all()
    return [_scored(r) for r in rows]


def score_values(session: Session, job_id: str) -> list[float]:
    """Top-1 score of every successful result (for a confidence histogram)."""
    return [
        float(s)
        for s in session.scalars(
            select(Result.score).where(Result.job_id == job_id, Result.status == ImageStatus.OK)
        )
        if s is not None
    ]


# ---------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class ErrorGroup:
    reason: str  # the error's kind: its text up to the first ": "
    count: int
    # (path, full error text), by path; at most the `limit_per_reason` asked for.
    items: list[tuple[str, str]]


def error_reason(error: str | None) -> str:
    """The kind of an error, without per-file detail: 'not a decodable image: cannot identify ...'
    -> 'not a decodable image'."""
    text = (error or "unknown error").strip() or "unknown error"
    return text.split(": ", 1)[0]


def error_groups(session: Session, job_id: str, limit_per_reason: int | None = None) -> list[ErrorGroup]:
    """The job's failed images grouped by reason, largest group first."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    counts: dict[str, int] = {}
    rows = session.execute(
        select(Image.path, Result.error)
        .join(Image, Image.id == Result.image_id)
        .where(Result.job_id == job_id, Result.status == ImageStatus.ERROR)
        .order_by(Image.path)
    )
    for path, error in rows:
        reason = error_reason(error)
        counts[reason] = counts.get(reason, 0) + 1
        items = grouped.setdefault(reason, [])
        if limit_per_reason is None or len(items) < limit_per_reason:
            items.append((str(path), str(error or "")))
    return [
        ErrorGroup(reason, counts[reason], grouped[reason])
        for reason in sorted(counts, key=lambda r: (-counts[r], r))
    ]


# ---------------------------------------------------------------------------- timings
def stage_samples(
    session: Session, job_id: str, status: ImageStatus | None = ImageStatus.OK, limit: int | None = None
) -> dict[str, list[float]]:
    """Per-stage latencies in ms (keys: STAGES) of the job's results with `status` (None: all).

    `limit` keeps about that many rows, evenly spread over the job (every k-th image id), so a
    histogram of a huge job stays cheap.
    """
    where = [Result.job_id == job_id]
    if status is not None:
        where.append(Result.status == status)
    if limit is not None:
        total = session.scalar(select(func.count()).select_from(Result).where(*where)) or 0
        step = max(1, math.ceil(total / max(limit, 1)))
        if step > 1:
            where.append(Result.image_id % step == 0)
    out: dict[str, list[float]] = {stage: [] for stage in STAGES}
    rows = session.execute(select(*_STAGE_COLUMNS.values()).where(*where))
    for row in rows:
        for stage, value in zip(STAGES, row, strict=True):
            out[stage].append(float(value or 0.0))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stage_percentiles(
    session: Session,
    job_id: str,
    qs: Iterable[float] = (50, 90, 99),
    status: ImageStatus | None = ImageStatus.OK,
) -> dict[str, dict[float, float]]:
    """{stage: {q: ms}} over the job's results with `status`."""
    samples = stage_samples(session, job_id, status=status)
    wanted = list(qs)
    return {stage: {q: percentile(values, q) for q in wanted} for stage, values in samples.items()}


# ---------------------------------------------------------------------------- throughput
@dataclass(frozen=True)
class Throughput:
    """Results per time bucket and worker, from the first result of the job on."""

    start: datetime | None  # when bucket 0 begins (UTC); None when there is no result
    bucket_seconds: float
    buckets: int
    counts: dict[str, list[int]]  # worker -> results finished in each bucket

    def rates(self, worker: str) -> list[float]:
        """Images/s of `worker` in each bucket."""
        return [n / self.bucket_seconds for n in self.counts[worker]]

    def total_rates(self) -> list[float]:
        return [sum(col) / self.bucket_seconds for col in zip(*self.counts.values(), strict=True)] or []

    def bucket_starts(self) -> list[float]:
        """Seconds since `start` at which each bucket begins."""
        return [i * self.bucket_seconds for i in range(self.buckets)]


def throughput_by_worker(
    session: Session,
    job_id: str,
    buckets: int = 40,
    min_bucket_seconds: float = 1.0,
    since: datetime | None = None,
) -> Throughput:
    """Images/s over time per worker: results counted by the time they were written.

    Time runs from `since` (e.g. the job's creation, to show the wait before the first result;
    default: the first result) to the last result, cut into at most `buckets` buckets of at least
    `min_bucket_seconds` each.
    """
    rows = [
        (str(w), as_utc(t))
        for w, t in session.execute(
            select(Result.worker, Result.created_at).where(Result.job_id == job_id)
        ).all()
    ]
    if not rows:
        return Throughput(since and as_utc(since), min_bucket_seconds, 0, {})
    first = min(t for _, t in rows)
    start = min(first, as_utc(since)) if since is not None else first
    span = max((t - start).total_seconds() for _, t in rows)
    width = max(min_bucket_seconds, span / max(buckets, 1))
    n = max(1, math.floor(span / width) + 1)
    counts: dict[str, list[int]] = {}
    for worker, t in rows:
        index = min(n - 1, int((t - start).total_seconds() // width))
        counts.setdefault(worker, [0] * n)[index] += 1
    return Throughput(start, width, n, dict(sorted(counts.items())))


# ---------------------------------------------------------------------------- comparing jobs
@dataclass(frozen=True)
class LabelChange:
    path: str
    image_id_a: int
    image_id_b: int
    status_a: ImageStatus
    label_a: str | None
    score_a: float | None
    status_b: ImageStatus
    label_b: str | None
    score_b: float | None
    file: str = ""  # the name to open (see ScoredImage.file)


def _matched(job_a: str, job_b: str, columns: Any) -> Any:
    """SELECT columns(img_a, img_b, res_a, res_b) over the images of job_a matched by path to
    those of job_b, both with a result; returns (statement, "the labels differ" condition)."""
    img_a, img_b = aliased(Image), aliased(Image)
    res_a, res_b = aliased(Result), aliased(Result)
    stmt = (
        select(*columns(img_a, img_b, res_a, res_b))
        .select_from(img_a)
        .join(img_b, (img_b.path == img_a.path) & (img_b.job_id == job_b))
        .join(res_a, res_a.image_id == img_a.id)
        .join(res_b, res_b.image_id == img_b.id)
        .where(img_a.job_id == job_a)
    )
    return stmt, res_a.label.is_distinct_from(res_b.label)


def changed_labels(session: Session, job_a: str, job_b: str, limit: int | None = None) -> list[LabelChange]:
    """Images present in both jobs (matched by path) whose top-1 label differs, by path.

    An image that failed in one job and not the other counts as changed (its label is None).
    """
    stmt, differs = _matched(
        job_a,
        job_b,
        lambda ia, ib, ra, rb: (
            ia.path,
            ia.id,
            ib.id,
            ra.status,
            ra.label,
            ra.score,
            rb.status,
            rb.label,
            rb.score,
        ),
    )
    stmt = stmt.where(differs).order_by(stmt.selected_columns[0])
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        LabelChange(
            str(path),
            int(ia),
            int(ib),
            ImageStatus(sa),
            la,
            _float(pa),
            ImageStatus(sb),
            lb,
            _float(pb),
            open_path(path),
        )
        for path, ia, ib, sa, la, pa, sb, lb, pb in session.execute(stmt).all()
    ]


def changed_label_count(session: Session, job_a: str, job_b: str) -> int:
    """How many images `changed_labels` would return without a limit."""
    stmt, differs = _matched(job_a, job_b, lambda *_: (func.count(),))
    return session.scalar(stmt.where(differs)) or 0


def common_image_count(session: Session, job_a: str, job_b: str) -> int:
    """Images with a result in both jobs, matched by path."""
    stmt, _ = _matched(job_a, job_b, lambda *_: (func.count(),))
    return session.scalar(stmt) or 0


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
