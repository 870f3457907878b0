"""Celery tasks: thin wrappers that hand the message to plain code, registered on a worker's app."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from worker.app import TASK_CLASSIFY, ImgbatchCelery
from worker.batch import process_batch
from worker.runtime import close_runtime, init_runtime, runtime


def register_tasks(app: ImgbatchCelery) -> None:
    """Add the classify task to `app`, and create each pool process's resources after fork."""
    settings = app.settings

    @app.task(name=TASK_CLASSIFY)
    def classify_batch(job_id: str, items: list[list[Any]], enqueued_at: float) -> int:
        return process_batch(runtime(settings), job_id, items, enqueued_at)

    # dispatch_uid: registering twice in one process (tests) keeps one handler, not two.
    worker_process_init.connect(
        lambda **_: init_runtime(settings), weak=False, dispatch_uid="imgbatch-runtime-init"
    )
    worker_process_shutdown.connect(
        lambda **_: close_runtime(), weak=False, dispatch_uid="imgbatch-runtime-close"
    )
