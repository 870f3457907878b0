"""The full pipeline, measured: submit -> private Redis -> `imgbatch worker` processes -> SQLite.

Everything runs in a private work directory (its own redis-server on a free loopback port, its own
SQLite file), so a benchmark never touches a user's data. Images/s is the job's own figure from the
database (job creation to its last result); stage latencies come from the stored per-image timings
(the same numbers `imgbatch stats JOB` shows); peak RSS is VmHWM of each Celery pool process.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from imgbatch.bench.plan import PipelineCase
from imgbatch.core.errors import UserError
from imgbatch.core.settings import Settings
from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.jobs import job_summary
from imgbatch.db.models import ImageStatus
from imgbatch.db.results import result_count

READY_TIMEOUT_S = 120
WARMUP_IMAGES_PER_PROCESS = 16


@dataclass(frozen=True)
class PipelineRun:
    label: str  # "int8" or "fp32"
    decode: str  # the workers' IMGBATCH_DECODE
    workers: int
    batch_size: int  # paths per task message
    runtime: str  # the workers' inference runtime
    infer_batch: int  # images per onnxruntime call: min(batch_size, worker.classify.INFER_BATCH)
    job_id: str
    images: int
    results: int
    ok: int
    errors: int
    pending: int
    seconds: float
    images_per_s: float
    # {stage: {"p50": ms, "p95": ms, "p99": ms}} over the job's ok rows
    stages: dict[str, dict[str, float]]
    peak_rss_mb: list[float] = field(default_factory=list)  # one per pool process

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Bench:
    """A private Redis and SQLite database under ``work``, shared by every run of one benchmark."""

    work: Path
    broker_url: str
    engine: Engine
    settings: Settings

    @property
    def db_url(self) -> str:
        return str(self.engine.url.render_as_string(hide_password=False))

    def env(self, model: Path, decode: str = "exact", runtime: str = "onnxruntime") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGBATCH_")}
        env.update(
            {
                "IMGBATCH_REDIS_URL": self.broker_url,
                "IMGBATCH_DATABASE_URL": self.db_url,
                "IMGBATCH_MODEL": str(model),
                "IMGBATCH_DATA_DIR": str(self.work / "data"),
                "IMGBATCH_DECODE": decode,
                "IMGBATCH_RUNTIME": runtime,
            }
        )
        return env


@contextlib.contextmanager
def private_services(work: Path) -> Iterator[Bench]:
    from imgbatch.producer.local_redis import local_redis

    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    data.mkdir(exist_ok=True)
    settings = Settings(data_dir=data, database_url=f"sqlite:///{work / 'bench.db'}", redis_url=None)
    engine = make_engine(settings.db_url)
    ensure_schema(engine)
    try:
        with local_redis() as url:
            yield Bench(work, url, engine, settings)
    finally:
        engine.dispose()


def warmup_dir(bench: Bench, images: list[Path], count: int) -> Path:
    """A small separate directory for warming workers up (copies, so paths stay inside the job)."""
    directory = bench.work / f"warmup-{count}"
    if not directory.is_dir():
        directory.mkdir()
        for i, src in enumerate(images[:count]):
            shutil.copyfile(src, directory / f"w{i:04d}{src.suffix}")
    return directory


def run_pipeline(
    bench: Bench,
    directory: Path,
    warmup: Path,
    case: PipelineCase,
) -> PipelineRun:
    """Start the case's worker processes (its model, runtime, count), warm them up on a small job, then
    time a job over ``directory`` at its batch size."""
    model, label, workers, batch_size = case.model, case.label, case.workers, case.batch_size
    from imgbatch.producer.embedded import worker_processes
    from imgbatch.producer.submit import record_job
    from imgbatch.producer.watch import Watcher

    tag = f"{label}-{case.decode}-{case.runtime}-{workers}x{batch_size}-{time.time_ns()}"
    log = bench.work / "logs" / f"workers-{tag}.log"
    with worker_processes(workers, bench.env(model, case.decode, case.runtime), log) as proc:
        _wait_ready(proc, log)
        watcher = Watcher(bench.settings, bench.engine, bench.broker_url)
        warm = record_job([warmup], model, batch_size, bench.engine, bench.broker_url, new=True)
        watcher.watch(warm.job_id)
        submitted = record_job([directory], model, batch_size, bench.engine, bench.broker_url, new=True)

        def alive(_finished: int, _total: int) -> None:
            if proc.poll() is not None:
                raise UserError(f"bench workers exited with code {proc.returncode} (log: {log})")

        watcher.watch(submitted.job_id, on_progress=alive)
        rss = pool_peak_rss_mb(proc.pid)
    return job_run(bench.engine, submitted.job_id, label, workers, batch_size, rss, case.decode, case.runtime)


def job_run(
    engine: Engine,
    job_id: str,
    label: str,
    workers: int,
    batch_size: int,
    rss: list[float],
    decode: str = "exact",
    runtime: str = "onnxruntime",
) -> PipelineRun:
    from imgbatch.db.stats import stage_samples
    from imgbatch.worker.classify import INFER_BATCH

    with session_factory(engine)() as session:
        summary = job_summary(session, job_id)
        results = result_count(session, job_id)
        samples = stage_samples(session, job_id, status=ImageStatus.OK)
    return PipelineRun(
        label=label,
        decode=decode,
        workers=workers,
        batch_size=batch_size,
        runtime=runtime,
        infer_batch=min(batch_size, INFER_BATCH),
        job_id=job_id,
        images=summary.total,
        results=results,
        ok=summary.ok,
        errors=summary.error,
        pending=summary.pending,
        seconds=summary.seconds,
        images_per_s=summary.images_per_second or 0.0,
        stages=stage_table(samples),
        peak_rss_mb=rss,
    )


def stage_table(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    from imgbatch.db.stats import percentile

    # The mean, besides the quantiles: decode times are skewed (a 12 MP JPEG costs 20x a web one),
    # and CPU time per image, which bounds images/s, is a mean.
    return {
        stage.removesuffix("_ms"): {
            **{f"p{q}": percentile(values, q) for q in (50, 95, 99)},
            "mean": sum(values) / len(values) if values else math.nan,
        }
        for stage, values in samples.items()
    }


def _wait_ready(proc: Any, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if " ready." in text:
            return
        if proc.poll() is not None:
            raise UserError(f"bench workers exited with code {proc.returncode}: see {log}")
        time.sleep(0.1)
    raise UserError(f"bench workers not ready after {READY_TIMEOUT_S} s: see {log}")


def pool_peak_rss_mb(main_pid: int) -> list[float]:
    """VmHWM (peak resident set) of each child of the Celery main process, in MB."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{main_pid}/task"):
            with open(f"/proc/{main_pid}/task/{task}/children") as fh:
                children.extend(int(pid) for pid in fh.read().split())
    peaks = []
    for pid in sorted(set(children)):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024.0)
                    break
    return peaks
