"""Schema, reads and writes on SQLite and PostgreSQL: uniqueness and idempotent persistence."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db.engine import ensure_schema, make_engine, session_factory
from db.models import Image, Result
from db.reads import NotFound, find_job, iter_image_batches, job_counts
from db.writes import add_images, create_job, finish_job_if_complete, save_results


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
        assert find_job(s, "abc").id == "abc123"
        with pytest.raises(NotFound, match="no job"):
            find_job(s, "zzz")
