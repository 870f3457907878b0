"""The one Celery app definition, built by `create_app` from a settings value.

Producer and worker each build it once per process. Reliable delivery is configuration: a batch
message is acknowledged only after its results are committed, and redelivered if the worker process
dies; persistence is idempotent, so a redelivered batch writes nothing twice.
"""

from __future__ import annotations

from celery import Celery

from imgbatch.core.settings import Settings
from imgbatch.core.urls import check_redis_url

TASK_CLASSIFY = "imgbatch.classify_batch"
# Longer than any batch can take: Redis redelivers an unacknowledged message after this long.
VISIBILITY_TIMEOUT_S = 3600


class ImgbatchCelery(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app that carries the settings it was built from: tasks and pool processes read them
    from here, never from the environment."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("imgbatch", set_as_current=False)
        self.settings = settings
        # "host:pid" of the worker's main process, set by `imgbatch worker` before the pool forks.
        self.node_id: str | None = None


def create_app(settings: Settings, broker_url: str | None = None) -> ImgbatchCelery:
    """The Celery app for `settings`; `broker_url` overrides settings.redis_url (the embedded Redis)."""
    app = ImgbatchCelery(settings)
    app.conf.update(
        broker_url=check_redis_url(broker_url or settings.redis_url or "redis://127.0.0.1:6379/0"),
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        # JSON only: a pickled message is refused, never executed.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # The database is the result store.
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        # A pool process killed mid-batch (OOM, the hard time limit): the message goes back to the
        # queue, and the next delivery finds the image that killed it by its decode marker.
        task_reject_on_worker_lost=True,
        # A batch that fails or times out is not acknowledged-and-dropped: the task gives it back
        # through the ledger itself, and a hard time limit requeues it.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_name,
        task_routes={TASK_CLASSIFY: {"queue": settings.queue_name}},
        worker_hijack_root_logger=False,
        # Task events let Flower (or `celery events`) watch the workers; one small message per batch.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_pool_limit=4,
    )
    return app
