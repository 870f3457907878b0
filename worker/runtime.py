"""Per-process resources: the onnxruntime session and the database engine.

Both are created in each pool process after fork (onnxruntime sessions and SQLAlchemy connection
pools do not survive a fork), on `worker_process_init`, or lazily on first use in a solo pool.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, session_factory
from imgbatch.cpus import usable_cpus
from imgbatch.settings import Settings, get_settings
from worker.classify import Classifier


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    classifier: Classifier | None
    classifier_error: str | None
    name: str
    # job id -> (resolved roots, model sha256); jobs don't change once submitted.
    jobs: dict[str, tuple[list[str], str, str]] = field(default_factory=dict)


_runtime: WorkerRuntime | None = None


def ort_threads(settings: Settings) -> int:
    """ORT intra-op threads for one pool process: the cores divided among the processes."""
    if settings.ort_threads:
        return settings.ort_threads
    processes = max(1, settings.worker_concurrency or 1)
    return max(1, usable_cpus() // processes)


def init_runtime() -> WorkerRuntime:
    global _runtime
    settings = get_settings()
    classifier: Classifier | None = None
    error: str | None = None
    try:
        classifier = Classifier.load(settings.model_path, ort_threads(settings))
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


def runtime() -> WorkerRuntime:
    return _runtime if _runtime is not None and _runtime.name.endswith(f":{os.getpid()}") else init_runtime()


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    init_runtime()


@worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.engine.dispose()
