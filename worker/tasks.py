"""Celery tasks: thin wrappers that hand the message to plain code, registered on a worker's app."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from imgbatch.worker.app import TASK_CLASSIFY, ImgbatchCelery
from imgbatch.worker.batch import give_back, process_batch
from imgbatch.worker.dispatcher import forget_dispatcher_after_fork
from imgbatch.worker.runtime import close_runtime, init_runtime, runtime

log = logging.getLogger(__name__)


def register_tasks(app: ImgbatchCelery) -> None:
    """Add the classify task to `app`, and create each pool process's resources after fork."""
    settings = app.settings

    @app.task(  # type: ignore[untyped-decorator]  # celery ships no type hints
        name=TASK_CLASSIFY,
        soft_time_limit=settings.task_soft_time_limit_s,
        time_limit=settings.task_time_limit_s,
    )
    def classify_batch(
        job_id: str, items: list[list[Any]], enqueued_at: float, batch_id: str | None = None
    ) -> int:
        rt = runtime(app)
        try:
            return process_batch(rt, job_id, items, enqueued_at, batch_id)
        except SoftTimeLimitExceeded:
            why = f"batch stopped by the soft time limit ({settings.task_soft_time_limit_s:g} s)"
        except Exception as exc:  # a bug or an outage of both Redis and the database
            log.exception("job %s: batch failed", job_id)
            why = f"batch failed: {type(exc).__name__}: {exc}"
        try:
            give_back(rt, job_id, items, batch_id, why)
        except Exception as exc:
            # Nowhere to record it: back to the queue (Celery drops a failed message otherwise).
            raise Reject(f"{why}; giving it back failed: {exc}", requeue=True) from exc
        return 0

    def init_pool_process(**_: Any) -> None:
        forget_dispatcher_after_fork()
        init_runtime(app)

    # dispatch_uid: registering twice in one process (tests) keeps one handler, not two.
    worker_process_init.connect(init_pool_process, weak=False, dispatch_uid="imgbatch-runtime-init")
    worker_process_shutdown.connect(
        lambda **_: close_runtime(), weak=False, dispatch_uid="imgbatch-runtime-close"
    )
