"""Celery tasks: thin wrappers that hand the message to plain code."""

from __future__ import annotations

from typing import Any

from worker.app import TASK_CLASSIFY, app
from worker.batch import process_batch
from worker.runtime import runtime


@app.task(name=TASK_CLASSIFY)
def classify_batch(job_id: str, items: list[list[Any]], enqueued_at: float) -> int:
    return process_batch(runtime(), job_id, items, enqueued_at)
