"""The dispatcher: in every `imgbatch worker`'s main process a thread keeps the worker's heartbeat and,
while it holds the lease (one worker at a time; any other takes over within `lease_ttl_s` of its
death), reconciles the database (truth) with Redis every `dispatch_interval_s`:

- keeps batches of each scanning or running job's pending images in the queue, up to
  `max_in_flight` messages, round-robin across jobs, from a per-job cursor kept in Redis;
- sends the batches of the in-flight ledger that are due (deferred ones), started by a worker whose
  heartbeat is gone (a dead host: long before Redis's visibility timeout would bring them back),
  started longer ago than the hard time limit, or sent, never started and no longer in the queue;
- starts a new sweep over a job's pending images when nothing of the job is in flight (the ledger is
  read first and the database second, so a batch committed in between is never missed);
- marks a job done once it is running (its scan is over) and nothing is pending.

Sending twice is harmless: results are insert-or-skip on (job, image) and workers skip images that
are no longer pending.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from imgbatch.db.engine import engine_for, session_factory
from imgbatch.db.images import next_image_batch
from imgbatch.db.jobs import ActiveJob, active_jobs, has_pending
from imgbatch.db.writes import finish_job_if_complete
from imgbatch.worker.app import TASK_CLASSIFY, ImgbatchCelery
from imgbatch.worker.ledger import Entry, InFlight, Ledger

log = logging.getLogger(__name__)

# Renew the lease only if we still hold it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
OUTAGES = (redis.exceptions.RedisError, OSError, kombu.exceptions.OperationalError, OperationalError)


class Lease:
    """`SET key node NX PX ttl`, renewed by compare-and-extend: at most one holder at a time."""

    def __init__(self, ledger: Ledger, node: str, ttl_s: float) -> None:
        self.client = ledger.client
        self.key = ledger.key("lease")
        self.node = node
        self.ttl_ms = int(ttl_s * 1000)
        self.held = False
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)

    def hold(self) -> bool:
        if self.held:
            self.held = bool(self._renew(keys=[self.key], args=[self.node, self.ttl_ms]))
        if not self.held:
            self.held = bool(self.client.set(self.key, self.node, nx=True, px=self.ttl_ms))
            if self.held:
                log.info("dispatcher lease taken by %s", self.node)
        return self.held

    def release(self) -> None:
        if self.held:
            self._release(keys=[self.key], args=[self.node])
            self.held = False


@dataclass
class Tick:
    """What one reconciliation sees and does."""

    now: float
    alive: set[str]
    queue_length: int
    room: int
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)


def pool_pids() -> list[int]:
    """Pids of this process's children (the prefork pool), from /proc."""
    me = os.getpid()
    pids = []
    for tid in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{tid}/children") as handle:
                pids += [int(p) for p in handle.read().split()]
        except OSError:
            continue
    return sorted(pids)


class Dispatcher(threading.Thread):
    def __init__(self, app: ImgbatchCelery, node: str, ledger: Ledger | None = None) -> None:
        super().__init__(name="imgbatch-dispatcher", daemon=True)
        self.app = app
        self.settings = app.settings
        self.node = node
        self.ledger = ledger or Ledger.from_url(str(app.conf.broker_url), self.settings.queue_name)
        self.lease = Lease(self.ledger, node, self.settings.lease_ttl_s)
        self.stopping = threading.Event()
        self.engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._last_beat = 0.0
        self._complaint = ""

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self.engine = engine_for(self.settings)
            self._sessions = session_factory(self.engine)
        return self._sessions

    def after_fork_in_child(self) -> None:
        """In a pool process forked while this thread's engine exists: leave its connections alone."""
        if self.engine is not None:
            self.engine.dispose(close=False)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        try:
            self.lease.release()
            self.ledger.client.delete(self.ledger.key("hb", self.node))
        except OUTAGES:
            pass

    def run(self) -> None:
        while not self.stopping.is_set():
            self.step()
            self.stopping.wait(self.settings.dispatch_interval_s)

    def step(self) -> None:
        """One heartbeat and, holding the lease, one reconciliation; outages are logged, not fatal."""
        try:
            now = time.monotonic()
            if now - self._last_beat >= self.settings.heartbeat_ttl_s / 3:
                self.ledger.heartbeat(self.node, pool_pids(), self.settings.heartbeat_ttl_s)
                self._last_beat = now
            if self.lease.hold():
                self.reconcile()
            self._complaint = ""
        except OUTAGES as exc:
            self._complain(
                f"dispatcher: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
        except Exception:  # a bug must not stop the heartbeat of a worker that can still work
            log.exception("dispatcher step failed")

    def _complain(self, text: str) -> None:
        if text != self._complaint:  # once per distinct outage, not twice a second
            log.warning("%s", text)
            self._complaint = text

    def reconcile(self) -> None:
        with self.sessions() as session:
            jobs = active_jobs(session)
        if not jobs:
            return
        queue_length = self.ledger.queue_length()
        tick = Tick(
            time.time(),
            set(self.ledger.alive_nodes()),
            queue_length,
            self.settings.max_in_flight - queue_length,
        )
        for job in jobs:  # the ledger first...
            tick.in_flight[job.job_id] = self.ledger.in_flight(job.job_id)
            self._recover(job.job_id, tick)
        exhausted = self._top_up(jobs, tick)
        for job in exhausted:  # ...the database second
            if not tick.in_flight[job.job_id].entries and not tick.sent.get(job.job_id):
                self._settle(job)

    def _recover(self, job_id: str, tick: Tick) -> None:
        """Send the job's ledger entries that are due, or whose delivery was lost."""
        found = tick.in_flight[job_id]
        overdue_s = self.settings.task_time_limit_s + self.settings.heartbeat_ttl_s
        for batch_id, entry in found.entries.items():
            claim = found.claims.get(batch_id)
            if entry.sent_at == 0:
                why = "due" if tick.now >= entry.not_before else ""
            elif claim is not None:
                dead = claim.node not in tick.alive
                overdue = tick.now - claim.started_at > overdue_s
                why = f"worker {claim.node} is gone" if dead else "overdue" if overdue else ""
            else:
                lost = tick.now - entry.sent_at > self.settings.stall_seconds and tick.queue_length == 0
                why = "never started" if lost else ""
            if why:
                if entry.sent_at:
                    entry.attempt += 1
                    log.warning("job %s: batch %s sent again (%s)", job_id, batch_id[:8], why)
                self._send(job_id, entry, None)

    def _top_up(self, jobs: list[ActiveJob], tick: Tick) -> list[ActiveJob]:
        """Fill the queue's room with pending images, one batch per job in turn; returns the jobs
        with nothing more to send in this sweep."""
        exhausted: list[ActiveJob] = []
        wanting = list(jobs)
        cursors = {job.job_id: self.ledger.cursor(job.job_id) for job in jobs}
        with self.sessions() as session:
            while wanting and tick.room > 0:
                for job in list(wanting):
                    if tick.room <= 0:
                        break
                    batch = next_image_batch(session, job.job_id, cursors[job.job_id], job.batch_size)
                    if not batch:
                        wanting.remove(job)
                        exhausted.append(job)
                        continue
                    cursors[job.job_id] = batch[-1][0]
                    entry = Entry.deferred([[i, p] for i, p in batch], 0.0)
                    self._send(job.job_id, entry, cursors[job.job_id])
                    tick.sent[job.job_id] = tick.sent.get(job.job_id, 0) + 1
                    tick.room -= 1
        return exhausted

    def _settle(self, job: ActiveJob) -> None:
        """Nothing of the job is in flight and its sweep is over: finish it, or sweep again."""
        with self.sessions.begin() as session:
            done = finish_job_if_complete(session, job.job_id)
            again = not done and has_pending(session, job.job_id)
        if done:
            log.info("job %s done", job.job_id)
            self.ledger.forget_job(job.job_id)
        elif again and self.ledger.cursor(job.job_id) > 0:
            log.info("job %s: nothing in flight, images pending: a new sweep", job.job_id)
            self.ledger.reset_cursor(job.job_id)

    def _send(self, job_id: str, entry: Entry, cursor: int | None) -> None:
        """Ledger first (a worker may start the batch at once), then the message; a new batch moves
        the job's cursor only once its message is out."""
        self.ledger.record_sent(job_id, entry)
        try:
            # Through the registered task, not `send_task` by name: Celery checks the arguments
            # against the task function's signature, so a renamed parameter fails here (and in
            # tests/test_task_message.py), not in the pool process that receives it.
            self.app.tasks[TASK_CLASSIFY].apply_async(
                kwargs=classify_kwargs(job_id, entry),
                serializer="json",
                queue=self.settings.queue_name,
                retry=False,  # an outage is the next tick's business
            )
        except Exception:
            if cursor is not None:  # a re-sent entry stays: it is sent again when found lost
                self.ledger.drop(job_id, entry.batch_id)
            raise
        if cursor is not None:
            self.ledger.set_cursor(job_id, cursor)


def classify_kwargs(job_id: str, entry: Entry) -> dict[str, Any]:
    """The classify task's arguments for one batch, as the dispatcher sends them."""
    return {"job_id": job_id, "items": entry.items, "enqueued_at": time.time(), "batch_id": entry.batch_id}


_running: list[Dispatcher] = []


def start_dispatcher(app: ImgbatchCelery, node: str) -> Dispatcher:
    """Start this worker's dispatcher thread (its main process only)."""
    dispatcher = Dispatcher(app, node)
    _running.append(dispatcher)
    dispatcher.start()
    return dispatcher


def stop_dispatchers() -> None:
    while _running:
        _running.pop().stop()


def forget_dispatcher_after_fork() -> None:
    """In a pool process: the inherited dispatcher is not ours to run or to close."""
    for dispatcher in _running:
        dispatcher.after_fork_in_child()
    _running.clear()
