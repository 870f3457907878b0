"""`imgbatch worker`: a Celery worker with one pool process per usable core by default, and in its main
process the dispatcher thread (worker.dispatcher) that any worker may run: no other service is needed
for every job to finish."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from imgbatch.core.cpus import usable_cpus
from imgbatch.core.errors import ModelFileError, UserError
from imgbatch.core.modelfile import read_model_info
from imgbatch.core.runtime_choice import check_model_in_child, planned_runtime
from imgbatch.core.services import check_redis
from imgbatch.core.settings import Settings
from imgbatch.db.engine import engine_for, ensure_schema
from imgbatch.worker.app import create_app
from imgbatch.worker.dispatcher import start_dispatcher, stop_dispatchers
from imgbatch.worker.runtime import ort_threads
from imgbatch.worker.tasks import register_tasks


def check_model(settings: Settings) -> None:
    """Fail fast with one line, before Celery forks anything; and settle `auto` here, once (measured in
    a child process and cached), so that the pool processes only read the choice. With OpenVINO the
    contract is checked in a child too (which leaves the compiled model in the cache dir for the pool
    processes): they carry whatever this process loads."""
    threads = ort_threads(settings)
    runtime, _why = planned_runtime(settings.model_path, threads, settings.runtime, settings.cache_dir)
    if runtime == "openvino":
        try:
            check_model_in_child(settings.model_path, threads, settings.cache_dir)
            return
        except ModelFileError:
            if settings.runtime == "openvino":
                raise
            # auto: the pool processes fall back to onnxruntime (and log why); check it for them.
    read_model_info(settings.model_path)


def start_worker(settings: Settings, concurrency: int | None, loglevel: str = "INFO") -> None:
    if settings.metrics_port:
        from imgbatch.worker.metrics import serve

        serve(settings.metrics_port)  # first: it may re-execute this command (worker.metrics)
    processes = concurrency or settings.worker_concurrency or usable_cpus()
    # Pool children split the cores among themselves by this count (worker.runtime.ort_threads).
    settings = settings.model_copy(update={"worker_concurrency": processes})
    check_model(settings)
    if settings.redis_url is None:
        raise UserError("IMGBATCH_REDIS_URL is not set: a worker needs a Redis to read batches from")
    check_redis(settings.redis_url)
    engine = engine_for(settings)
    ensure_schema(engine)
    engine.dispose()
    app = create_app(settings)
    app.node_id = f"{socket.gethostname()}:{os.getpid()}"
    register_tasks(app)

    def dispatch(**_: Any) -> None:  # after the pool has forked: the thread lives in this process only
        start_dispatcher(app, app.node_id or "")

    worker_ready.connect(dispatch, weak=False, dispatch_uid="imgbatch-dispatcher-start")
    worker_shutdown.connect(
        lambda **_: stop_dispatchers(), weak=False, dispatch_uid="imgbatch-dispatcher-stop"
    )
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
