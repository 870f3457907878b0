"""Comparing two jobs over the images they share: agreement and changed labels.

Each function takes a Session (the caller owns it), runs only SELECTs and returns typed values: ORM
rows or frozen dataclasses. Whatever would need dialect-specific SQL (time bucketing, percentiles) is
done in Python on rows streamed from a portable query, so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from imgbatch.core.names import open_path
from imgbatch.db.models import Image, ImageStatus, Result


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
