"""Schema, reads and writes on SQLite and PostgreSQL: uniqueness and idempotent persistence."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.images import iter_image_batches
from imgbatch.db.jobs import NotFound, find_job, job_counts
from imgbatch.db.models import Image, JobState, Result
from imgbatch.db.writes import add_images, create_job, finish_job_if_complete, mark_scanned, save_results


def _row(job_id: str, image_id: int, status: str = "ok") -> dict:
    return {
        "job_id": job_id,
        "image_id": image_id,
        "status": status,
        "label": "tabby" if status == "ok" else None,
        "class_index": 281 if status == "ok" else None,
        "score": 0.9 if status == "ok" else None,
        "top5": None,
        "error": None if status == "ok" else "empty file",
        "queue_ms": 1.0,
        "decode_ms": 2.0,
        "infer_ms": 3.0,
        "persist_ms": 0.0,
        "batch_size": 2,
        "worker": "w:1",
        "model_sha256": "a" * 64,
    }


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    ensure_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def test_redelivered_batch_writes_nothing_twice(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        create_job(s, "job1", ["/x"], "/m.onnx", "a" * 64, 2)
        assert add_images(s, "job1", ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"]) == 3
        assert find_job(s, "job1").state == JobState.SCANNING
        assert not finish_job_if_complete(s, "job1")  # never finished while its scan goes on
        assert mark_scanned(s, "job1")
    with sessions.begin() as s:
        ids = [i for batch in iter_image_batches(s, "job1", 2) for i, _ in batch]
    assert len(ids) == 3
    for _ in range(2):  # the same batch delivered twice
        with sessions.begin() as s:
            save_results(s, [_row("job1", ids[0]), _row("job1", ids[1], "error")])
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 2
        counts = job_counts(s, "job1")
        assert (counts.ok, counts.error, counts.pending) == (1, 1, 1)
        assert not finish_job_if_complete(s, "job1")
        save_results(s, [_row("job1", ids[2])])
        assert finish_job_if_complete(s, "job1")
        assert find_job(s, "job1").state == "done"


def test_unique_constraint_is_enforced_by_the_database(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        create_job(s, "job2", ["/x"], "/m.onnx", "a" * 64, 2)
        add_images(s, "job2", ["/x/a.jpg"])
    with sessions() as s:
        image_id = s.scalar(select(Image.id))
        s.add(Result(**_row("job2", image_id)))
        s.add(Result(**_row("job2", image_id)))
        with pytest.raises(IntegrityError):
            s.commit()


def test_adding_the_same_paths_again_adds_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        create_job(s, "job3", ["/x"], "/m.onnx", "a" * 64, 2)
        add_images(s, "job3", ["/x/a.jpg", "/x/b.jpg"])
        assert add_images(s, "job3", ["/x/b.jpg", "/x/c.jpg"]) == 3


def test_job_lookup_by_latest_prefix_and_unknown(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        with pytest.raises(NotFound, match="no jobs yet"):
            find_job(s, "latest")
        create_job(s, "abc123", ["/x"], "/m.onnx", "a" * 64, 2)
        assert find_job(s, "latest").id == "abc123"
        assert find_job(s, "abc1").id == "abc123"
        with pytest.raises(NotFound, match="too short"):
            find_job(s, "abc")
        with pytest.raises(NotFound, match="no job id given"):
            find_job(s, "")
        with pytest.raises(NotFound, match="no job"):
            find_job(s, "zzzz")
        with pytest.raises(NotFound, match="no job"):
            find_job(s, "ab_%")  # LIKE wildcards are plain characters in a prefix


def test_the_last_two_batches_committed_at_once_finish_the_job(sessions, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """Two workers commit a job's last two batches at the same moment: the job ends done. On
    PostgreSQL both batches are inserted before either checks for pending images (a barrier), which
    under READ COMMITTED without the job row lock left the job running with nothing pending."""
    with sessions.begin() as s:
        create_job(s, "race", ["/x"], "/m.onnx", "a" * 64, 2)
        add_images(s, "race", ["/x/a.jpg", "/x/b.jpg"])
        mark_scanned(s, "race")
    with sessions() as s:
        ids = [i for batch in iter_image_batches(s, "race", 2) for i, _ in batch]
    # SQLite serializes writers (the second waits for the first's commit), so no barrier there.
    barrier = threading.Barrier(2, timeout=20) if db_url.startswith("postgresql") else None
    errors: list[BaseException] = []

    def last_batch(image_id: int) -> None:
        try:
            with sessions.begin() as s:
                save_results(s, [_row("race", image_id)])
                if barrier is not None:
                    barrier.wait()
                finish_job_if_complete(s, "race")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=last_batch, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with sessions() as s:
        assert job_counts(s, "race").pending == 0
        assert find_job(s, "race").state == JobState.DONE
