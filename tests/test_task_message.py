"""The dispatcher's message fits the classify task's own signature: renaming a parameter of the task
(or of the message) fails here, not in a pool process that receives a message it cannot call."""

from __future__ import annotations

import pytest

from imgbatch.core.settings import Settings
from imgbatch.worker.app import TASK_CLASSIFY, create_app
from imgbatch.worker.dispatcher import classify_kwargs
from imgbatch.worker.ledger import Entry
from imgbatch.worker.tasks import register_tasks


def test_the_dispatchers_message_fits_the_task_signature() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0"))
    register_tasks(app)
    task = app.tasks[TASK_CLASSIFY]
    kwargs = classify_kwargs("job-1", Entry.deferred([[1, "/photos/a.jpg", 10]], 0.0))
    task.__header__(**kwargs)  # Celery's own argument check, as apply_async runs it
    assert set(kwargs) == {"job_id", "items", "enqueued_at", "batch_id"}
    with pytest.raises(TypeError):
        task.__header__(**{**kwargs, "job": kwargs["job_id"]})
