"""Per-process resources: the onnxruntime session and the database engine.

Both are created in each pool process after fork (onnxruntime sessions and SQLAlchemy connection
pools do not survive a fork), on `worker_process_init`, or lazily on first use in a solo pool.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, session_factory
from db.reads import JobSource
from imgbatch.core.cpus import usable_cpus
from imgbatch.core.settings import Settings
from worker.classify import Classifier


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    classifier: Classifier | None
    classifier_error: str | None
    name: str
    # job id -> where it may read and which model it wants; jobs don't change once submitted.
    jobs: dict[str, JobSource] = field(default_factory=dict)


_runtime: WorkerRuntime | None = None


def ort_threads(settings: Settings) -> int:
    """ORT intra-op threads for one pool process: the cores divided among the processes."""
    if settings.ort_threads:
        return settings.ort_threads
    processes = max(1, settings.worker_concurrency or 1)
    return max(1, usable_cpus() // processes)


def init_runtime(settings: Settings) -> WorkerRuntime:
    global _runtime
    classifier: Classifier | None = None
    error: str | None = None
    try:
        classifier = Classifier.load(settings.model_path, ort_threads(settings), settings.max_pixels)
    except Exception as exc:  # recorded per image: the worker stays up and says why
        error = f"model unavailable on worker: {exc}"
    engine = make_engine(settings.db_url)
    _runtime = WorkerRuntime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        classifier=classifier,
        classifier_error=error,
        name=f"{socket.gethostname()}:{os.getpid()}",
    )
    return _runtime


def runtime(settings: Settings) -> WorkerRuntime:
    """This process's runtime; made on first use after a fork (the parent's is never reused)."""
    if _runtime is not None and _runtime.name.endswith(f":{os.getpid()}"):
        return _runtime
    return init_runtime(settings)


def close_runtime() -> None:
    if _runtime is not None:
        _runtime.engine.dispose()
