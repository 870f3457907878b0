"""One batch message end to end: check paths, classify, persist in one transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from db.models import ImageStatus
from db.reads import JobSource, job_image_paths, job_source
from db.writes import finish_job_if_complete, save_results, set_persist_ms
from worker.classify import Classifier, Prediction
from worker.metrics import observe_batch
from worker.runtime import WorkerRuntime, ort_threads

log = logging.getLogger(__name__)
T = TypeVar("T")

# Database blips: retry with backoff (0.5 s doubling to 10 s, about a minute in all) before failing.
PERSIST_ATTEMPTS = 8
PERSIST_BACKOFF_S = 0.5


def process_batch(rt: WorkerRuntime, job_id: str, items: list[list[Any]], enqueued_at: float) -> int:
    """Classify `items` ([[image_id, path], ...]) of `job_id`; returns how many rows were written."""
    started = time.time()
    queue_ms = max(0.0, (started - enqueued_at) * 1000.0)
    job = _retrying(lambda: _job(rt, job_id))
    if job is None:
        log.warning("batch for unknown job %s dropped", job_id)
        return 0
    model_sha = job.model_sha256
    # Trust the database, not the message: only this job's images, at the paths recorded for them.
    known = _retrying(lambda: _known_paths(rt, job_id, items))
    checked = [item for item in items if known.get(int(item[0])) == item[1]]
    if len(checked) != len(items):
        log.warning(
            "job %s: ignored %d batch items that are not this job's images", job_id, len(items) - len(checked)
        )
    if not checked:
        return 0
    paths = [str(path) for _, path in checked]
    reasons = {p: "outside the job's directories" for p in paths if not _inside(p, job.roots)}
    classifier = _classifier_for(rt, job.model_path, model_sha)
    if isinstance(classifier, str):
        preds = [Prediction(p, 0.0, error=classifier) for p in paths]
    else:
        preds = classifier.classify(paths, reasons)
    rows = [
        _row(job_id, int(image_id), pred, queue_ms, len(checked), rt.name, model_sha)
        for (image_id, _), pred in zip(checked, preds, strict=True)
    ]
    persist_ms = _retrying(lambda: _persist(rt, job_id, rows))
    for row in rows:
        row["persist_ms"] = persist_ms
    observe_batch(rows)
    return len(rows)


def _retrying(step: Callable[[], T]) -> T:
    """Run a database step, retrying through outages with backoff; the message stays unacknowledged
    meanwhile, and if the database stays away the error propagates and the batch stays pending."""
    delay = PERSIST_BACKOFF_S
    for attempt in range(1, PERSIST_ATTEMPTS + 1):
        try:
            return step()
        except OperationalError as exc:
            if attempt == PERSIST_ATTEMPTS:
                raise
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            log.warning("database unavailable (attempt %d/%d): %s", attempt, PERSIST_ATTEMPTS, reason)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


def _job(rt: WorkerRuntime, job_id: str) -> JobSource | None:
    """The job's roots (resolved) and model, cached: jobs don't change once submitted."""
    if job_id not in rt.jobs:
        with rt.sessions() as session:
            source = job_source(session, job_id)
        if source is None:
            return None
        rt.jobs[job_id] = JobSource(
            [str(Path(r).resolve()) for r in source.roots], source.model_path, source.model_sha256
        )
    return rt.jobs[job_id]


def _known_paths(rt: WorkerRuntime, job_id: str, items: list[list[Any]]) -> dict[int, str]:
    with rt.sessions() as session:
        return job_image_paths(session, job_id, [int(image_id) for image_id, _ in items])


def _inside(path: str, roots: list[str]) -> bool:
    # Resolve first, so `..` and symlinks cannot lead a job outside its directories.
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    return any(real.is_relative_to(root) for root in roots)


def _classifier_for(rt: WorkerRuntime, model_path: str, model_sha: str) -> Classifier | str:
    """The session for the job's model: the preloaded one if hashes match, else load the job's file."""
    current = rt.classifier
    if current is not None and current.info.graph_sha256 == model_sha:
        return current
    try:
        candidate = Classifier.load(Path(model_path), ort_threads(rt.settings), rt.settings.max_pixels)
    except Exception as exc:
        return rt.classifier_error or f"model unavailable on worker: {exc}"
    if candidate.info.graph_sha256 != model_sha:
        found = candidate.info.graph_sha256[:12]
        return f"model on worker at {model_path} has hash {found}, the job wants {model_sha[:12]}"
    # One session per process: replace, don't accumulate (memory per worker stays bounded).
    rt.classifier = candidate
    return candidate


def _row(
    job_id: str,
    image_id: int,
    pred: Prediction,
    queue_ms: float,
    batch_size: int,
    worker: str,
    model_sha: str,
) -> dict[str, Any]:
    top = pred.top[0] if pred.top else None
    return {
        "job_id": job_id,
        "image_id": image_id,
        "status": ImageStatus.OK if pred.top else ImageStatus.ERROR,
        "label": top[1] if top else None,
        "class_index": top[0] if top else None,
        "score": top[2] if top else None,
        "top5": [list(t) for t in pred.top] if pred.top else None,
        "error": pred.error,
        "queue_ms": queue_ms,
        "decode_ms": pred.decode_ms,
        "infer_ms": pred.infer_ms,
        "persist_ms": 0.0,
        "batch_size": batch_size,
        "worker": worker,
        "model_sha256": model_sha,
    }


def _persist(rt: WorkerRuntime, job_id: str, rows: list[dict[str, Any]]) -> float:
    """Write the batch in one transaction; returns the persist time per image, ms."""
    start = time.perf_counter()
    with rt.sessions.begin() as session:
        save_results(session, rows)
        # The time of the batch's statements before the commit, shared per image.
        per_image_ms = (time.perf_counter() - start) * 1000.0 / len(rows)
        set_persist_ms(session, job_id, [r["image_id"] for r in rows], per_image_ms)
        finish_job_if_complete(session, job_id)
    return per_image_ms
