"""Prometheus metrics of a worker, on IMGBATCH_METRICS_PORT when set.

Celery's prefork pool runs tasks in child processes, so the metrics use prometheus_client's
multiprocess mode: each child writes its samples to files in a directory, and the parent's HTTP
server sums them on every scrape. prometheus_client takes that directory only from the
PROMETHEUS_MULTIPROC_DIR environment variable, read when it is first imported ("we have no control
over ... so we use an environment variable", prometheus_client/values.py). So `serve` runs the worker
again with that variable in its environment (an exec with an explicit environment, nothing written to
this process's own), and with no port set prometheus_client is never imported at all.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

_metrics: dict[str, Any] = {}
# Seconds; per-image stage latencies span sub-millisecond persists to multi-second queue waits.
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(port: int) -> None:
    """In the worker's main process, before the pool forks: serve the summed metrics on `port`."""
    if MULTIPROC_ENV not in os.environ:
        # Replaces this process with the same command line and the variable set (see above).
        directory = tempfile.mkdtemp(prefix="imgbatch-metrics-")
        os.execve(sys.executable, sys.orig_argv, {**os.environ, MULTIPROC_ENV: directory})
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    start_http_server(port, registry=registry)


def _get() -> dict[str, Any]:
    if not _metrics:
        from prometheus_client import Counter, Histogram

        _metrics["images"] = Counter("imgbatch_images", "Images classified or failed", ["status"])
        _metrics["batches"] = Counter("imgbatch_batches", "Batches persisted")
        _metrics["stage"] = Histogram(
            "imgbatch_stage_seconds", "Per-image latency of each stage", ["stage"], buckets=BUCKETS_S
        )
    return _metrics


def observe_batch(rows: list[dict[str, Any]]) -> None:
    """Count a persisted batch; a no-op unless the worker was started with a metrics port."""
    if MULTIPROC_ENV not in os.environ:
        return
    metrics = _get()
    metrics["batches"].inc()
    for row in rows:
        metrics["images"].labels(row["status"]).inc()
        for stage in ("queue", "decode", "infer", "persist"):
            metrics["stage"].labels(stage).observe(row[f"{stage}_ms"] / 1000.0)
