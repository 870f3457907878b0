"""One batch message end to end: check it against the database, classify, persist, settle the ledger.

Outcomes per image: a result row (ok, or an error that is a property of the file), or pending again
for a later attempt (a failure of the environment, a decode that killed the previous pool process
below its cap, a batch stopped by the soft time limit). What is still to do goes back to the ledger
as deferred batches, after the rest is committed, in the same Redis transaction that removes this
batch from the ledger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError, OperationalError

from imgbatch.core.files import BROKEN_LINK, inside_roots, is_broken_link
from imgbatch.core.names import decode_path, open_path, shown
from imgbatch.core.stores import inside_prefixes, is_url
from imgbatch.db.images import job_images
from imgbatch.db.jobs import job_source
from imgbatch.db.models import ImageStatus
from imgbatch.db.writes import finish_job_if_complete, save_results, set_persist_ms
from imgbatch.worker.classify import Classifier, Prediction
from imgbatch.worker.ledger import Entry, Marker, marker_text
from imgbatch.worker.metrics import observe_batch
from imgbatch.worker.runtime import JobInfo, WorkerRuntime, load_classifier

log = logging.getLogger(__name__)
T = TypeVar("T")
# A live marker is at most this much older than the per-image timeout (the timer's own slack).
MARKER_GRACE_S = 5.0
PROBLEM_TTL_S = 60.0


class DatabaseDown(Exception):
    """The database stayed unreachable for the whole retry budget."""


class Batch:
    """One delivery of a batch message in a pool process."""

    def __init__(
        self, rt: WorkerRuntime, job_id: str, items: list[list[Any]], enqueued_at: float, batch_id: str | None
    ) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.job_id = job_id
        self.items: list[list[Any]] = [[int(i), str(p)] for i, p in items]
        self.batch_id = batch_id
        self.queue_ms = max(0.0, (time.time() - enqueued_at) * 1000.0)
        self.rows: list[dict[str, Any]] = []
        self.deferred: list[Entry] = []
        self.marked: int | None = None
        self.markers_on = True
        self.sizes: dict[str, int | None] = {}  # stored path -> size its listing gave (object stores)

    # ------------------------------------------------------------------ the steps
    def run(self) -> int:
        self._quietly(
            lambda: self.rt.ledger.claim(self.job_id, self.batch_id, self.rt.node) if self.batch_id else None
        )
        try:
            job = self._db(lambda: _job(self.rt, self.job_id))
            if job is None:
                log.warning("batch for unknown job %s dropped", self.job_id)
                return self._settle(persisted=0)
            todo = self._db(self._pending_items)
            if todo:
                self._classify(job, todo)
            written = self._db(self._persist) if self.rows else 0
        except DatabaseDown as exc:
            log.warning(
                "job %s: database unavailable for %.0f s: batch given back (%s)",
                self.job_id,
                self.settings.db_retry_s,
                exc,
            )
            self.rows, self.deferred = [], [Entry.deferred(self.items, self.settings.retry_backoff_s)]
            written = 0
        return self._settle(written)

    def _pending_items(self) -> list[list[Any]]:
        """This job's images, at the paths recorded for them, still pending (a duplicate delivery of a
        committed batch finds none): trust the database, not the message."""
        with self.rt.sessions() as session:
            known = job_images(session, self.job_id, [i for i, _ in self.items])
        foreign = [it for it in self.items if it[0] not in known or known[it[0]].path != it[1]]
        if foreign:
            log.warning(
                "job %s: ignored %d batch items that are not this job's images", self.job_id, len(foreign)
            )
        self.sizes = {known[it[0]].path: known[it[0]].size_bytes for it in self.items if it not in foreign}
        return [it for it in self.items if it not in foreign and known[it[0]].state == ImageStatus.PENDING]

    def _classify(self, job: JobInfo, todo: list[list[Any]]) -> None:
        missing = next((r for r in job.roots if not is_url(r) and not os.path.isdir(r)), None)
        if missing is not None:
            root = shown(os.fsdecode(missing))
            self._count_transient(todo, f"job directory {root} not found on {self.rt.host}")
            return
        classifier = self._classifier(job)
        if isinstance(classifier, str):
            problem = f"worker {self.rt.node} cannot load the job's model: {classifier}"
            self._quietly(lambda: self.rt.ledger.set_problem(self.rt.node, problem, PROBLEM_TTL_S))
            log.warning("job %s: %s; batch given back", self.job_id, problem)
            self.deferred.append(Entry.deferred(todo, self.settings.retry_backoff_s))
            return
        todo = self._after_leftovers(todo)
        paths = [open_path(p) for _, p in todo]
        reasons = {p: _refusal(p) for p in paths if not _inside_job(p, job.roots)}
        sizes = {open_path(p): size for p, size in self.sizes.items()}
        preds = classifier.classify(
            paths, reasons, self._guard(todo), stop_on=(SoftTimeLimitExceeded,), sizes=sizes
        )
        self._unmark()
        unfinished = [it for it, pred in zip(todo, preds, strict=True) if pred.unfinished]
        if unfinished:
            self.deferred.append(Entry.deferred(unfinished, 0.0))
        transient = [(it, pred.transient) for it, pred in zip(todo, preds, strict=True) if pred.transient]
        for item, reason in transient:
            self._count_transient([item], reason or "transient failure")
        for item, pred in zip(todo, preds, strict=True):
            if not pred.unfinished and not pred.transient:
                self.rows.append(self._row(item[0], pred, classifier.info.sha256, classifier.runner.name))

    # ------------------------------------------------------------------ poison inputs
    def _after_leftovers(self, todo: list[list[Any]]) -> list[list[Any]]:
        """Images whose marker an earlier delivery left behind killed (or hung) that pool process:
        count it; at the cap it gets an error row, below it is sent again alone after this batch.
        An image another process is decoding right now is left to it (it stays pending)."""
        try:
            found = self.rt.ledger.markers(self.job_id, [i for i, _ in todo])
        except redis.exceptions.RedisError:
            return todo
        if not found:
            return todo
        alive = self._quietly(self.rt.ledger.alive_nodes) or {}
        keep = []
        for item in todo:
            marker = found.get(item[0])
            if marker is None:
                keep.append(item)
            elif not self._decoding_now(marker, alive):
                self._count_death(item, marker)
        return keep

    def _decoding_now(self, marker: Marker, alive: dict[str, list[int]]) -> bool:
        if time.time() - marker.started_at > self.settings.image_timeout_s + MARKER_GRACE_S:
            return False
        if marker.host == self.rt.host:
            return marker.pid != os.getpid() and _pid_exists(marker.pid)
        return marker.pid in alive.get(marker.node, [])

    def _count_death(self, item: list[Any], marker: Marker) -> None:
        """A process died decoding this image. Older than the per-image timeout, it hung (the hard time
        limit killed it): an error row at once, since the next reader of a page a stuck mount never
        delivers waits uninterruptibly and wedges its pool process for good (measured on a FUSE
        mount). Otherwise count the death; send it again alone below the cap."""
        deaths = self._quietly(lambda: self.rt.ledger.count_death(self.job_id, item[0], marker))
        if not deaths:
            return  # another delivery counted it and handles the image
        timeout_s = self.settings.image_timeout_s
        if time.time() - marker.started_at > timeout_s:
            error = f"timed out after {timeout_s:g} s"
        elif deaths >= self.settings.max_decode_kills:
            error = f"worker process killed while decoding ({deaths} times)"
        else:
            log.warning(
                "job %s: image %d killed its pool process (%d): sent again alone",
                self.job_id,
                item[0],
                deaths,
            )
            self.deferred.append(Entry.deferred([item], 0.0))
            return
        self.rows.append(self._row(item[0], Prediction(item[1], 0.0, error=error), ""))

    @contextlib.contextmanager
    def _mark(self, image_id: int) -> Iterator[None]:
        if self.markers_on:
            text = marker_text(self.rt.node, self.rt.host)
            try:
                self.rt.ledger.mark(self.job_id, image_id, text, self.marked)
                self.marked = image_id
            except redis.exceptions.RedisError as exc:
                log.warning("decode markers off for this batch: Redis: %s", exc)
                self.markers_on = False
        yield

    def _guard(self, todo: list[list[Any]]) -> Callable[[int], contextlib.AbstractContextManager[None]]:
        return lambda index: self._mark(todo[index][0])

    def _unmark(self) -> None:
        if self.marked is not None and self.markers_on:
            marked = self.marked
            self._quietly(lambda: self.rt.ledger.unmark(self.job_id, marked))
        self.marked = None

    # ------------------------------------------------------------------ transient failures
    def _count_transient(self, items: list[list[Any]], reason: str) -> None:
        """Environment failures: pending again with backoff, until the attempt cap gives an error row."""
        again: list[list[Any]] = []
        attempts = 1
        for item in items:
            attempts = self._quietly(self._attempt_counter(item[0])) or 1
            if attempts >= self.settings.max_attempts:
                error = f"transient failure, gave up after {attempts} attempts: {reason}"
                self.rows.append(self._row(item[0], Prediction(item[1], 0.0, error=error), ""))
            else:
                again.append(item)
        if again:
            delay = self.settings.retry_backoff_s * 2 ** (attempts - 1)
            log.warning(
                "job %s: %d images to try again in %.0f s: %s", self.job_id, len(again), delay, reason
            )
            self.deferred.append(Entry.deferred(again, delay, attempts + 1))

    def _attempt_counter(self, image_id: int) -> Callable[[], int]:
        return lambda: self.rt.ledger.count_attempt(self.job_id, image_id)

    # ------------------------------------------------------------------ persisting
    def _row(
        self, image_id: int, pred: Prediction, model_sha: str, runtime: str | None = None
    ) -> dict[str, Any]:
        """``runtime``: the runtime of the classifier that handled the image (None: no model saw it)."""
        top = pred.top[0] if pred.top else None
        return {
            "job_id": self.job_id,
            "image_id": image_id,
            "status": ImageStatus.OK if pred.top else ImageStatus.ERROR,
            "label": top[1] if top else None,
            "class_index": top[0] if top else None,
            "score": top[2] if top else None,
            "top5": [list(t) for t in pred.top] if pred.top else None,
            "error": pred.error,
            "queue_ms": self.queue_ms,
            "decode_ms": pred.decode_ms,
            "infer_ms": pred.infer_ms,
            "persist_ms": 0.0,
            "batch_size": len(self.items),
            "worker": self.rt.name,
            "model_sha256": model_sha or getattr(self.rt.jobs.get(self.job_id), "model_sha256", ""),
            "runtime": runtime,
        }

    def _persist(self) -> int:
        """Write the rows in one transaction and finish the job if they were its last."""
        start = time.perf_counter()
        try:
            with self.rt.sessions.begin() as session:
                save_results(session, self.rows)
                per_image_ms = (time.perf_counter() - start) * 1000.0 / len(self.rows)
                set_persist_ms(session, self.job_id, [r["image_id"] for r in self.rows], per_image_ms)
                finish_job_if_complete(session, self.job_id)
        except IntegrityError:
            if self._db(lambda: _job(self.rt, self.job_id, cached=False)) is not None:
                raise
            log.warning("job %s was deleted while its batch ran: results dropped", self.job_id)
            return 0
        for row in self.rows:
            row["persist_ms"] = per_image_ms
        observe_batch(self.rows)
        return len(self.rows)

    def _settle(self, persisted: int) -> int:
        """Out of the ledger, with what is still to do as deferred entries; if Redis is away, the
        dispatcher finds this batch overdue (or, after a Redis restart, sweeps the job again)."""
        self._quietly(lambda: self.rt.ledger.finish(self.job_id, self.batch_id, self.deferred))
        return persisted

    # ------------------------------------------------------------------ helpers
    def _classifier(self, job: JobInfo) -> Classifier | str:
        """The session for the job's model: the preloaded one if the file hashes match, else the job's
        file; or why there is none on this worker."""
        current = self.rt.classifier
        if current is not None and current.info.sha256 == job.model_sha256:
            return current
        try:
            candidate = load_classifier(self.settings, job.model_path)
        except Exception as exc:
            return str(exc).splitlines()[0]
        if candidate.info.sha256 != job.model_sha256:
            found = candidate.info.sha256[:12]
            return f"{job.model_path} has sha256 {found}..., the job wants {job.model_sha256[:12]}..."
        self.rt.classifier = candidate  # one session per process: replace, don't accumulate
        return candidate

    def _db(self, step: Callable[[], T]) -> T:
        """Run a database step, retrying through an outage with backoff for `db_retry_s`; then
        DatabaseDown (the batch goes back, nothing is acknowledged-and-dropped)."""
        deadline = time.monotonic() + self.settings.db_retry_s
        delay = 0.5
        while True:
            try:
                return step()
            except OperationalError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                if time.monotonic() + delay > deadline:
                    raise DatabaseDown(reason) from exc
                log.warning("database unavailable: %s", reason)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _quietly(self, step: Callable[[], T]) -> T | None:
        """A Redis step whose failure must not fail the batch (the database is the truth)."""
        try:
            return step()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("Redis unavailable: %s", exc)
            return None


def process_batch(
    rt: WorkerRuntime, job_id: str, items: list[list[Any]], enqueued_at: float, batch_id: str | None = None
) -> int:
    """Classify `items` ([[image_id, stored path], ...]) of `job_id`; returns how many rows were written."""
    return Batch(rt, job_id, items, enqueued_at, batch_id).run()


def give_back(rt: WorkerRuntime, job_id: str, items: list[list[Any]], batch_id: str | None, why: str) -> None:
    """After an unexpected failure of the whole batch: try again later, counted against the cap."""
    batch = Batch(rt, job_id, items, time.time(), batch_id)
    batch._count_transient(batch.items, why)
    written = batch._db(batch._persist) if batch.rows else 0
    batch._settle(written)


def _job(rt: WorkerRuntime, job_id: str, cached: bool = True) -> JobInfo | None:
    """The job's roots (resolved, as bytes) and model, cached: jobs don't change once submitted."""
    if not cached or job_id not in rt.jobs:
        with rt.sessions() as session:
            source = job_source(session, job_id)
        if source is None:
            return None
        # A prefix is kept as the URL it is; a directory is resolved, as the paths checked against it.
        roots = [decode_path(r) if is_url(r) else os.path.realpath(decode_path(r)) for r in source.roots]
        rt.jobs[job_id] = JobInfo(roots, source.model_path, source.model_sha256)
    return rt.jobs[job_id]


def _inside_job(path: str, roots: list[bytes]) -> bool:
    """A local path inside one of the job's directories, or an object URL under one of its prefixes."""
    if is_url(path):
        return inside_prefixes(path, [os.fsdecode(r) for r in roots if is_url(r)])
    return inside_roots(path, [r for r in roots if not is_url(r)])


def _refusal(path: str) -> str:
    """Why a path outside the job is not read. A dangling link resolves to a target that is not there:
    that, not the target's place, is what the user can fix."""
    if not is_url(path) and is_broken_link(path):
        return BROKEN_LINK
    return "outside the job's directories"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
