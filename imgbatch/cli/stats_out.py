"""`imgbatch stats`: a job's stage breakdown from the stored per-image timings, as data and as tables."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from imgbatch.core.names import counted, shown
from imgbatch.db.jobs import job_summary
from imgbatch.db.models import ImageStatus
from imgbatch.db.stats import (
    STAGES,
    error_groups,
    label_histogram,
    percentile,
    stage_samples,
    throughput_by_worker,
)

QUANTILES = (50, 95, 99)


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 3)


def job_stats(session: Session, job_id: str, label_limit: int = 20, buckets: int = 20) -> dict[str, Any]:
    """Everything `imgbatch stats` shows, as plain JSON-ready data."""
    summary = job_summary(session, job_id)
    samples = stage_samples(session, job_id, status=ImageStatus.OK)
    throughput = throughput_by_worker(session, job_id, buckets=buckets, since=summary.created_at)
    return {
        "job_id": job_id,
        "state": summary.state,
        "images": summary.total,
        "ok": summary.ok,
        "error": summary.error,
        "pending": summary.pending,
        "seconds": round(summary.seconds, 3),
        "images_per_second": _num(summary.images_per_second),
        "model_sha256": summary.model_sha256,
        "stages_ms": {
            stage: {f"p{q}": _num(percentile(values, q)) for q in QUANTILES} | {"n": len(values)}
            for stage, values in samples.items()
        },
        "workers": {w.worker: w.images for w in summary.workers},
        "images_per_second_over_time": {
            "bucket_seconds": round(throughput.bucket_seconds, 3),
            "starts_s": [round(t, 3) for t in throughput.bucket_starts()],
            "total": [round(r, 2) for r in throughput.total_rates()],
            "per_worker": {w: [round(r, 2) for r in throughput.rates(w)] for w in throughput.counts},
        },
        "errors": {g.reason: g.count for g in error_groups(session, job_id, limit_per_reason=0)},
        "labels": {c.label: c.count for c in label_histogram(session, job_id, limit=label_limit)},
    }


def print_stats(console: Console, data: dict[str, Any]) -> None:
    rate = data["images_per_second"]
    speed = f", {rate:.1f} images/s" if rate else ""
    console.print(
        f"job {data['job_id']} ({data['state']}): {counted(data['images'], 'image')}, {data['ok']} ok, "
        f"{counted(data['error'], 'error')}, {data['pending']} pending; {data['seconds']:.1f} s{speed}",
        markup=False,
    )
    stages = Table(title="per-image latency by stage (ms, ok images)")
    stages.add_column("stage")
    for q in QUANTILES:
        stages.add_column(f"p{q}", justify="right")
    for stage in STAGES:
        row = data["stages_ms"][stage]
        stages.add_row(
            stage.removesuffix("_ms"),
            *("" if row[f"p{q}"] is None else f"{row[f'p{q}']:.2f}" for q in QUANTILES),
        )
    console.print(stages)
    workers = Table(title="images per worker")
    workers.add_column("worker")
    workers.add_column("images", justify="right")
    for worker, n in data["workers"].items():
        workers.add_row(Text(shown(worker)), str(n))
    console.print(workers)
    over = data["images_per_second_over_time"]
    if over["total"]:
        line = "  ".join(f"{t:.0f}s:{r:.0f}" for t, r in zip(over["starts_s"], over["total"], strict=True))
        console.print(
            f"images/s over time (from submission, {over['bucket_seconds']:.1f} s buckets): {line}",
            markup=False,
        )
    if data["errors"]:
        reasons = ", ".join(f"{shown(reason)} ({n})" for reason, n in data["errors"].items())
        console.print(Text("errors by reason: " + reasons))
    if data["labels"]:
        console.print(
            Text("labels: " + ", ".join(f"{shown(label)} ({n})" for label, n in data["labels"].items()))
        )
