"""Record a job and its images, streaming: the scan of its directories (or the listing of its
object-store prefixes) inserts its names a chunk per short transaction, and the job stays SCANNING
until the scan is over, so workers start on the first images while it goes on. Sending batches is
the workers' dispatcher's job (worker.dispatcher), not the producer's."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from imgbatch.core.errors import UserError
from imgbatch.core.modelfile import read_model_info
from imgbatch.core.services import check_redis
from imgbatch.db.engine import ensure_schema, session_factory
from imgbatch.db.jobs import find_unfinished_job, job_counts, job_state
from imgbatch.db.models import JobState
from imgbatch.db.writes import count_images, create_job, delete_job_chunk, insert_images, mark_scanned
from imgbatch.producer.scan import listing, resolve_sources

DEFAULT_SCAN_CHUNK = 2000
T = TypeVar("T")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    images: int
    resumed: bool
    finished: int = 0  # images of a resumed job that already have their result


def record_job(
    directories: list[str | Path],  # or object-store URL prefixes
    model_path: Path,
    batch_size: int,
    engine: Engine,
    broker_url: str,
    new: bool = False,
    scan_chunk: int = DEFAULT_SCAN_CHUNK,
) -> Submitted:
    """Create the job and scan its directories into it, or continue the unfinished job over the same
    directories with the same model (re-running a submit whose producer died) unless `new` is set.

    The job's model is identified by the sha256 of the file's bytes.
    """
    roots = resolve_sources(directories)
    info = read_model_info(model_path)
    check_redis(broker_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    if not new:
        with sessions() as session:
            found = find_unfinished_job(session, roots, info.sha256)
            found_id, scanning = (found.id, found.state == JobState.SCANNING) if found else ("", False)
        if found_id:
            if scanning:  # the producer died mid-scan: scan again, the names already there are skipped
                scan_into(sessions, found_id, roots, scan_chunk)
            with sessions() as session:
                counts = job_counts(session, found_id)
            return Submitted(found_id, counts.total, resumed=True, finished=counts.finished)
    job_id = uuid.uuid4().hex
    with sessions.begin() as session:
        create_job(session, job_id, roots, str(model_path.resolve()), info.sha256, batch_size)
    total = scan_into(sessions, job_id, roots, scan_chunk)
    if total == 0:
        while _delete_chunk(sessions, job_id):
            pass
        raise UserError(f"no images found in {', '.join(roots)}")
    return Submitted(job_id, total, resumed=False)


def scan_into(sessions: sessionmaker[Session], job_id: str, roots: list[str], chunk: int) -> int:
    """Insert the roots' image names into the job, `chunk` rows per transaction (a name already there
    is skipped), then move it from SCANNING to RUNNING. Stops early if the job was cancelled.
    Returns how many images the job has."""
    for found in _chunks(listing(roots), chunk):
        with sessions() as session:  # a read of its own: the insert's transaction starts with a write
            if job_state(session, job_id) != JobState.SCANNING:
                break
        with sessions.begin() as session:
            insert_images(session, job_id, [name for name, _ in found], [size for _, size in found])
    with sessions.begin() as session:
        total = count_images(session, job_id)
        if total:
            mark_scanned(session, job_id)
    return total


def _delete_chunk(sessions: sessionmaker[Session], job_id: str) -> int:
    with sessions.begin() as session:
        return delete_job_chunk(session, job_id)


def _chunks(names: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(names)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
