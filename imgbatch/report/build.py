"""Gather a job's aggregates (db.stats, db.jobs, db.compare), make thumbnails and charts, render one HTML
file."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup
from sqlalchemy.orm import Session

from imgbatch.core import outputs
from imgbatch.core.errors import UserError
from imgbatch.core.names import decode_path, shown
from imgbatch.db import stats
from imgbatch.db.compare import changed_label_count, changed_labels, common_image_count
from imgbatch.db.jobs import JobSummary, job_summary
from imgbatch.report import charts
from imgbatch.report.template import REPORT_TEMPLATE
from imgbatch.report.thumbs import THUMB_SIDE, make_thumbs


@dataclass(frozen=True)
class ReportOptions:
    """Bounds that keep the file small and quick to open however big the job is."""

    per_label: int = 12  # thumbnails per label group
    max_gallery_thumbs: int = 1200  # labels beyond per_label * groups get counts only
    lowest: int = 24  # least confident images shown
    errors_per_reason: int = 2000  # file names listed per error reason
    changes: int = 300  # label changes shown with thumbnails
    open_groups: int = 3  # label groups expanded when the page opens
    thumb_side: int = THUMB_SIDE
    stage_sample_limit: int = 100_000  # rows behind the latency histograms
    top_labels_chart: int = 15


@dataclass
class _Group:
    label: str
    count: int
    mean_score: float
    min_score: float
    images: list[stats.ScoredImage] = field(default_factory=list)


@dataclass(frozen=True)
class _Chart:
    key: str
    alt: str
    uri: str | None


def build_report(
    session: Session, job_id: str, compare_job_id: str | None = None, options: ReportOptions | None = None
) -> str:
    """The report of `job_id` (a full id) as one self-contained HTML document.

    Raises UserError when the job has no results yet.
    """
    opts = options or ReportOptions()
    summary = job_summary(session, job_id)
    if summary.results == 0:
        raise UserError(
            f"job {job_id} has no results yet ({summary.pending} images pending): "
            "start workers or wait, then report again"
        )
    labels = stats.label_histogram(session, job_id)
    groups = _gallery(session, job_id, labels, opts)
    lowest = stats.lowest_confidence(session, job_id, opts.lowest)
    compare = _comparison(session, job_id, compare_job_id, opts) if compare_job_id is not None else None
    files = [(im.path, im.file) for g in groups for im in g.images] + [(im.path, im.file) for im in lowest]
    if compare is not None:
        files += [(c.path, c.file) for c in compare["changes"]]
    stage_samples = stats.stage_samples(session, job_id, limit=opts.stage_sample_limit)
    return (
        _environment(summary.roots)
        .from_string(REPORT_TEMPLATE)
        .render(
            s=summary,
            stages=_stage_rows(stage_samples),
            labels=labels,
            groups=groups,
            labels_without_thumbs=labels[len(groups) :],
            per_label=max(opts.per_label, 0),
            open_groups=opts.open_groups,
            lowest=lowest,
            error_groups=stats.error_groups(session, job_id, limit_per_reason=opts.errors_per_reason),
            charts=_charts(session, summary, labels, stage_samples, opts),
            thumbs=make_thumbs(files, [decode_path(r) for r in summary.roots], opts.thumb_side),
            compare=compare,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
    )


def _gallery(
    session: Session, job_id: str, labels: list[stats.LabelCount], opts: ReportOptions
) -> list[_Group]:
    """The label groups that get thumbnails: as many of the largest as the thumbnail budget allows."""
    per_label = max(opts.per_label, 0)
    with_thumbs = min(len(labels), opts.max_gallery_thumbs // per_label) if per_label else 0
    samples = stats.label_samples(session, job_id, [lc.label for lc in labels[:with_thumbs]], per_label)
    return [
        _Group(lc.label, lc.count, lc.mean_score, lc.min_score, samples.get(lc.label, []))
        for lc in labels[:with_thumbs]
    ]


def _comparison(session: Session, job_id: str, other: str, opts: ReportOptions) -> dict[str, Any]:
    return {
        "job_id": other,
        "changes": changed_labels(session, job_id, other, limit=opts.changes),
        "count": changed_label_count(session, job_id, other),
        "common": common_image_count(session, job_id, other),
    }


def _charts(
    session: Session,
    summary: JobSummary,
    labels: list[stats.LabelCount],
    stage_samples: dict[str, list[float]],
    opts: ReportOptions,
) -> list[_Chart]:
    job_id = summary.job_id
    throughput = stats.throughput_by_worker(session, job_id, min_bucket_seconds=0.5, since=summary.created_at)
    top = [(lc.label, lc.count) for lc in labels[: opts.top_labels_chart]]
    return [
        _Chart(
            "stages",
            "Histograms of per-image latency by stage: queue wait, decode, inference, persist",
            _uri(charts.stage_histograms(stage_samples)),
        ),
        _Chart(
            "throughput", "Images per second over time, per worker", _uri(charts.throughput_chart(throughput))
        ),
        _Chart(
            "scores",
            "Histogram of top-1 scores",
            _uri(charts.score_histogram(stats.score_values(session, job_id))),
        ),
        _Chart("labels", "Most frequent labels", _uri(charts.label_bars(top))),
    ]


def _stage_rows(stage_samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    return [
        {
            "title": charts.STAGE_TITLES[stage],
            "p50": stats.percentile(values, 50) if values else 0.0,
            "p95": stats.percentile(values, 95) if values else 0.0,
        }
        for stage, values in stage_samples.items()
    ]


STDOUT = Path("-")


def write_report(html: str, output: Path) -> None:
    """Write to stdout (`-`), or atomically to a regular file (see imgbatch.core.outputs): a failed
    write leaves no half report and nothing but a regular file is ever replaced."""
    if output == STDOUT:
        sys.stdout.write(html)
        sys.stdout.flush()
        return
    with outputs.open_output(output, "report") as handle:
        handle.write(html.encode("utf-8"))


def check_writable(output: Path) -> None:
    """Fail before the (possibly long) work when the report cannot or must not be written there."""
    outputs.check_writable(output, "report")


def _uri(svg: str | None) -> str | None:
    return charts.svg_data_uri(svg) if svg is not None else None


def _finalize(value: Any) -> Any:
    # Every {{ value }} of text: control characters escaped (Jinja's autoescape handles markup). The
    # template's own line breaks (tooltips) stay; names, labels and errors are escaped whole by the
    # filters below before they are joined with them.
    if isinstance(value, str) and not isinstance(value, Markup):
        return shown(value, keep_newlines=True)
    return value


def _environment(roots: list[str]) -> Environment:
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False, finalize=_finalize)

    def shortpath(path: str) -> str:
        """The path relative to the job directory holding it (the full path when outside all)."""
        for root in roots:
            try:
                rel = os.path.relpath(path, root)
            except ValueError:
                continue
            if not rel.startswith(".."):
                return shown(rel)
        return shown(path)

    def top5text(top5: list[Any]) -> str:
        return "\n".join(f"{float(t[2]):.3f}  {shown(t[1])}" for t in top5 if len(t) >= 3)

    env.filters["shortpath"] = shortpath
    env.filters["top5text"] = top5text
    env.filters["shown"] = shown
    return env
