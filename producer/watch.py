"""Watch a job until it is done or cancelled, with progress: what `run`, `submit --wait` and `resume
--wait` do. The watcher carries no recovery (the workers' dispatcher does); it only reads, and says
once when no worker has been alive for a while, or when a worker reports that it cannot do the job."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from imgbatch.core.settings import Settings
from imgbatch.core.urls import redact_url
from imgbatch.db.engine import session_factory
from imgbatch.db.jobs import job_counts, job_state
from imgbatch.db.models import JobState
from imgbatch.worker.ledger import Ledger

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Notice = Callable[[str], None]


class Watcher:
    def __init__(self, settings: Settings, engine: Engine, broker_url: str, poll_s: float = 0.5) -> None:
        self.settings = settings
        self.sessions = session_factory(engine)
        self.broker_url = broker_url
        self.ledger = Ledger.from_url(broker_url, settings.queue_name)
        self.poll_s = poll_s
        # No heartbeat for this long: say so once.
        self.no_worker_s = max(10.0, 2 * settings.heartbeat_ttl_s)
        self.told: set[str] = set()

    def watch(
        self, job_id: str, on_progress: Progress | None = None, on_notice: Notice | None = None
    ) -> JobState:
        """Block until the job is done or cancelled; returns its state."""
        last_alive = time.monotonic()
        while True:
            try:
                with self.sessions() as session:
                    state = job_state(session, job_id)
                    counts = job_counts(session, job_id)
            except OperationalError as exc:
                log.warning(
                    "database unavailable: %s", str(exc.orig).strip().splitlines()[0] if exc.orig else exc
                )
                time.sleep(1.0)
                continue
            if on_progress:
                on_progress(counts.finished, counts.total)
            if state is None or state in (JobState.DONE, JobState.CANCELLED):
                return state or JobState.CANCELLED
            last_alive = self._look_at_workers(last_alive, on_notice)
            time.sleep(self.poll_s)

    def _look_at_workers(self, last_alive: float, on_notice: Notice | None) -> float:
        try:
            alive = self.ledger.alive_nodes()
            problems = self.ledger.problems()
        except (redis.exceptions.RedisError, OSError):
            return last_alive
        now = time.monotonic()
        if alive:
            last_alive = now
        elif now - last_alive > self.no_worker_s:
            self._tell(
                f"no imgbatch worker has been alive for {self.no_worker_s:.0f} s on queue "
                f"{self.settings.queue_name!r} at IMGBATCH_REDIS_URL={redact_url(self.broker_url)}: "
                "start one with `imgbatch worker`",
                on_notice,
            )
        for text in problems.values():
            self._tell(text, on_notice)
        return last_alive

    def _tell(self, text: str, on_notice: Notice | None) -> None:
        if text not in self.told:
            self.told.add(text)
            (on_notice or log.warning)(text)
