"""Statistics of a job's results: labels, scores, errors by reason, stage latencies, throughput.

Each function takes a Session (the caller owns it), runs only SELECTs and returns typed values: ORM
rows or frozen dataclasses. Whatever would need dialect-specific SQL (time bucketing, percentiles) is
done in Python on rows streamed from a portable query, so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imgbatch.core.names import open_path
from imgbatch.db.jobs import as_utc
from imgbatch.db.models import Image, ImageStatus, Result

STAGES = ("queue_ms", "decode_ms", "infer_ms", "persist_ms")
_STAGE_COLUMNS = {
    "queue_ms": Result.queue_ms,
    "decode_ms": Result.decode_ms,
    "infer_ms": Result.infer_ms,
    "persist_ms": Result.persist_ms,
}


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
