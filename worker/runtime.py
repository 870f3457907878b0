"""Per-process resources: the model runner (onnxruntime or OpenVINO), the database engine and the
Redis ledger.

All are created in each pool process after fork (runtime sessions and SQLAlchemy connection
pools do not survive a fork), on `worker_process_init`, or lazily on first use in a solo pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from imgbatch.core.cpus import usable_cpus
from imgbatch.core.settings import Settings
from imgbatch.db.engine import engine_for, session_factory
from imgbatch.worker.app import ImgbatchCelery
from imgbatch.worker.classify import Classifier
from imgbatch.worker.ledger import Ledger


@dataclass(frozen=True)
class JobInfo:
    """What a worker needs to know of a job: where it may read (resolved, as bytes) and which model."""

    roots: list[bytes]
    model_path: str
    model_sha256: str


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    ledger: Ledger
    classifier: Classifier | None
    classifier_error: str | None
    name: str  # this pool process: "host:pid", recorded on its result rows
    node: str  # its worker (the main process): "host:pid", whose heartbeat says it is alive
    host: str
    # job id -> where it may read and which model it wants; jobs don't change once submitted.
    jobs: dict[str, JobInfo] = field(default_factory=dict)


_runtime: WorkerRuntime | None = None
log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def ort_threads(settings: Settings) -> int:
    """Inference threads (either runtime's) for one pool process: the cores divided among the processes."""
    if settings.ort_threads:
        return settings.ort_threads
    processes = max(1, settings.worker_concurrency or 1)
    return max(1, usable_cpus() // processes)


def load_classifier(settings: Settings, model_path: Path | str) -> Classifier:
    return Classifier.load(
        Path(model_path),
        ort_threads(settings),
        settings.max_pixels,
        max_bytes=settings.max_file_bytes,
        timeout_s=settings.image_timeout_s,
        decode=settings.decode,
        runtime=settings.runtime,
        cache_dir=settings.cache_dir,
    )


def _one_malloc_arena() -> None:
    """glibc gives each thread that allocates its own heap arena, and the runtimes' threads each keep
    one resident: with a single arena a pool process running OpenVINO measured 194 instead of 200 MB
    peak RSS over 200 photos. The batch loop is one thread, so nothing contends for the arena."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)


def init_runtime(app: ImgbatchCelery) -> WorkerRuntime:
    global _runtime
    settings = app.settings
    _one_malloc_arena()
    classifier: Classifier | None = None
    error: str | None = None
    try:
        classifier = load_classifier(settings, settings.model_path)
        log.info("pool process %d: %s on %s", os.getpid(), classifier.info.path.name, classifier.runner.name)
    except Exception as exc:  # the worker stays up, and says why when a job needs the model
        error = str(exc)
    engine = engine_for(settings)
    host = socket.gethostname()
    _runtime = WorkerRuntime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        ledger=Ledger.from_url(str(app.conf.broker_url), settings.queue_name),
        classifier=classifier,
        classifier_error=error,
        name=f"{host}:{os.getpid()}",
        node=getattr(app, "node_id", None) or f"{host}:{os.getppid()}",
        host=host,
    )
    return _runtime


def runtime(app: ImgbatchCelery) -> WorkerRuntime:
    """This process's runtime; made on first use after a fork (the parent's is never reused)."""
    if _runtime is not None and _runtime.name.endswith(f":{os.getpid()}"):
        return _runtime
    return init_runtime(app)


def close_runtime() -> None:
    if _runtime is not None:
        _runtime.engine.dispose()
