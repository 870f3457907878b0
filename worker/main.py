"""`imgbatch worker`: start a Celery worker with one pool process per usable core by default."""

from __future__ import annotations

import os
import socket

from db.engine import ensure_schema, make_engine
from imgbatch.core.cpus import usable_cpus
from imgbatch.core.errors import UserError
from imgbatch.core.modelfile import read_model_info
from imgbatch.core.settings import Settings
from worker.app import check_redis, create_app
from worker.tasks import register_tasks


def start_worker(settings: Settings, concurrency: int | None, loglevel: str = "INFO") -> None:
    if settings.metrics_port:
        from worker.metrics import serve

        serve(settings.metrics_port)  # first: it may re-execute this command (worker.metrics)
    processes = concurrency or settings.worker_concurrency or usable_cpus()
    # Pool children split the cores among themselves by this count (worker.runtime.ort_threads).
    settings = settings.model_copy(update={"worker_concurrency": processes})
    # Fail fast with one line, before Celery forks anything.
    read_model_info(settings.model_path)
    if settings.redis_url is None:
        raise UserError("IMGBATCH_REDIS_URL is not set: a worker needs a Redis to read batches from")
    check_redis(settings.redis_url)
    ensure_schema(make_engine(settings.db_url))
    app = create_app(settings)
    register_tasks(app)
    app.worker_main(
        [
            "worker",
            f"--concurrency={processes}",
            "--pool=prefork",
            f"--queues={settings.queue_name}",
            f"--hostname=imgbatch-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={loglevel}",
            # Gossip and mingle only add start-up latency and chatter for a batch worker.
            "--without-gossip",
            "--without-mingle",
        ]
    )
