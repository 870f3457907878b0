"""`imgbatch worker`: start a Celery worker with one pool process per usable core by default."""

from __future__ import annotations

import os
import socket

from db.engine import ensure_schema, make_engine
from imgbatch.cpus import usable_cpus
from imgbatch.errors import UserError
from imgbatch.modelfile import read_model_info
from imgbatch.settings import get_settings
from worker.app import check_redis


def start_worker(concurrency: int | None, loglevel: str = "INFO") -> None:
    settings = get_settings()
    processes = concurrency or settings.worker_concurrency or usable_cpus()
    # Pool children read this through the settings object to split the cores among themselves.
    os.environ["IMGBATCH_WORKER_CONCURRENCY"] = str(processes)
    get_settings.cache_clear()
    settings = get_settings()
    # Fail fast with one line, before Celery forks anything.
    read_model_info(settings.model_path)
    if settings.redis_url is None:
        raise UserError("IMGBATCH_REDIS_URL is not set: a worker needs a Redis to read batches from")
    check_redis(settings.redis_url)
    ensure_schema(make_engine(settings.db_url))

    from worker.app import app, configure

    configure(app, settings)
    if settings.metrics_port:
        from worker.metrics import enable

        enable(settings.metrics_port)
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
