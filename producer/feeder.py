"""Feed a job's pending images to Redis with back-pressure, and notice when batches were lost.

The database is the source of truth: an image is pending until its result is committed. The feeder
keeps at most `max_in_flight` batch messages waiting in the queue, so a million-image job never
holds a million messages in Redis. While waiting, if nothing finishes for `stall_seconds` and the
queue is empty although images are still pending, their batches were lost (Redis restarted empty,
or a whole worker was killed holding unacknowledged messages): the feeder sends them again.
Redelivery is harmless because results are written idempotently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import kombu.exceptions
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from db.engine import session_factory
from db.reads import job_counts, next_image_batch
from db.writes import finish_job_if_complete
from imgbatch.core.settings import redact_url
from worker.app import TASK_CLASSIFY, ImgbatchCelery

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class FeedStats:
    batches_sent: int = 0
    resweeps: int = 0


class Feeder:
    def __init__(
        self, app: ImgbatchCelery, engine: Engine, job_id: str, batch_size: int, poll_seconds: float = 0.25
    ) -> None:
        """Feed `job_id` through `app` (its broker and settings) in messages of `batch_size` paths."""
        settings = app.settings
        self.app = app
        self.sessions = session_factory(engine)
        self.job_id = job_id
        self.batch_size = batch_size
        self.queue = settings.queue_name
        self.max_in_flight = settings.max_in_flight
        self.stall_seconds = settings.stall_seconds
        self.poll_seconds = poll_seconds
        self.broker_url = str(app.conf.broker_url)
        self.redis = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2, socket_timeout=5)
        self.cursor = 0  # highest image id sent in the current sweep
        self.all_sent = False
        self.stats = FeedStats()

    def run(self, wait: bool, on_progress: Progress | None = None) -> FeedStats:
        """Send every pending image; with `wait`, also block until none is pending."""
        last_finished, last_change = -1, time.monotonic()
        while True:
            try:
                self._top_up()
            except (
                redis.exceptions.RedisError,
                OSError,
                kombu.exceptions.OperationalError,
                OperationalError,
            ) as exc:
                # Redis is away (restarting?): keep what was sent, try again on the next poll.
                log.warning("Redis at %s unavailable: %s", redact_url(self.broker_url), exc)
            if self.all_sent and not wait:
                return self.stats
            try:
                with self.sessions.begin() as session:
                    counts = job_counts(session, self.job_id)
                    if counts.pending == 0:
                        finish_job_if_complete(session, self.job_id)
            except OperationalError as exc:
                # A database blip: the job's state is safe there; look again shortly.
                log.warning(
                    "database unavailable: %s", str(exc.orig).strip().splitlines()[0] if exc.orig else exc
                )
                time.sleep(1.0)
                continue
            if on_progress:
                on_progress(counts.finished, counts.total)
            if counts.pending == 0:
                return self.stats
            now = time.monotonic()
            if counts.finished != last_finished:
                last_finished, last_change = counts.finished, now
            elif self.all_sent and now - last_change > self.stall_seconds and self._queue_empty():
                log.warning(
                    "job %s: no image finished for %.0f s and the queue is empty; re-enqueueing %d pending",
                    self.job_id,
                    now - last_change,
                    counts.pending,
                )
                self.resend_pending()
                last_change = now
            time.sleep(self.poll_seconds)

    def resend_pending(self) -> None:
        """Start a new sweep over every pending image."""
        self.cursor = 0
        self.all_sent = False
        self.stats.resweeps += 1

    def _queue_length(self) -> int:
        # A sync client; redis-py's stubs type llen for the async client too.
        return int(cast(int, self.redis.llen(self.queue)))

    def _queue_empty(self) -> bool:
        try:
            return self._queue_length() == 0
        except (redis.exceptions.RedisError, OSError):
            return False

    def _top_up(self) -> None:
        if self.all_sent:
            return
        room = self.max_in_flight - self._queue_length()
        if room <= 0:
            return
        with self.sessions() as session, self.app.producer_or_acquire() as producer:
            for _ in range(room):
                batch = next_image_batch(session, self.job_id, self.cursor, self.batch_size)
                if not batch:
                    self.all_sent = True
                    return
                self.app.send_task(
                    TASK_CLASSIFY,
                    kwargs={
                        "job_id": self.job_id,
                        "items": [[i, p] for i, p in batch],
                        "enqueued_at": time.time(),
                    },
                    producer=producer,
                    serializer="json",
                    queue=self.queue,
                    # Fail over to the next poll instead of retrying inside kombu for long.
                    retry=False,
                )
                self.cursor = batch[-1][0]
                self.stats.batches_sent += 1
