"""db.stats, db.jobs and db.compare on SQLite and PostgreSQL, on rows written through db.writes like the
workers write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from imgbatch.db import stats
from imgbatch.db.compare import changed_label_count, changed_labels, common_image_count
from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.jobs import job_summary
from imgbatch.db.models import Result
from imgbatch.db.writes import add_images, create_job, save_results


def _ok(job: str, image_id: int, label: str, score: float, worker: str, **ms: float) -> dict:  # type: ignore[type-arg]
    return {
        "job_id": job,
        "image_id": image_id,
        "status": "ok",
        "label": label,
        "class_index": 1,
        "score": score,
        "top5": [[1, label, score], [2, "other", 1 - score]],
        "error": None,
        "queue_ms": ms.get("queue", 1.0),
        "decode_ms": ms.get("decode", 2.0),
        "infer_ms": ms.get("infer", 3.0),
        "persist_ms": ms.get("persist", 4.0),
        "batch_size": 4,
        "worker": worker,
        "model_sha256": "a" * 64,
    }


def _err(job: str, image_id: int, error: str) -> dict:  # type: ignore[type-arg]
    return {
        **_ok(job, image_id, "x", 0.0, "h:1"),
        "status": "error",
        "label": None,
        "class_index": None,
        "score": None,
        "top5": None,
        "error": error,
    }


def _make_job(session, job: str, names: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    create_job(session, job, ["/photos"], "/m.onnx", "a" * 64, 4)
    add_images(session, job, [f"/photos/{n}" for n in names])
    from sqlalchemy import select

    from imgbatch.db.models import Image

    return {
        Path(p).name: i for i, p in session.execute(select(Image.id, Image.path).where(Image.job_id == job))
    }


def test_stats_aggregate_a_job(db_url: str) -> None:
    engine = make_engine(db_url)
    ensure_schema(engine)
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg"]
    with session_factory(engine).begin() as session:
        ids = _make_job(session, "j1", names)
        save_results(
            session,
            [
                _ok("j1", ids["a.jpg"], "cat", 0.9, "h:1", queue=10.0),
                _ok("j1", ids["b.jpg"], "cat", 0.5, "h:1", queue=20.0),
                _ok("j1", ids["c.jpg"], "cat", 0.7, "h:2", queue=30.0),
                _ok("j1", ids["d.jpg"], "dog", 0.2, "h:2", queue=40.0),
                _ok("j1", ids["e.jpg"], "dog", 0.8, "h:2", queue=50.0),
                _err("j1", ids["f.jpg"], "empty file"),
                _err("j1", ids["g.jpg"], "not a decodable image: cannot identify image file '/photos/g.jpg'"),
            ],
        )
        # Results spread over 10 seconds: worker h:1 early, h:2 late.
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        for name, dt in [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 8), ("d.jpg", 9), ("e.jpg", 10)]:
            session.execute(
                update(Result)
                .where(Result.image_id == ids[name])
                .values(created_at=t0 + timedelta(seconds=dt))
            )
        for name in ("f.jpg", "g.jpg"):
            session.execute(update(Result).where(Result.image_id == ids[name]).values(created_at=t0))

    with session_factory(engine)() as session:
        s = job_summary(session, "j1")
        assert (s.total, s.ok, s.error, s.pending, s.results) == (8, 5, 2, 1, 7)
        assert s.result_model_sha256s == ["a" * 64]
        assert {(w.worker, w.images) for w in s.workers} == {("h:1", 4), ("h:2", 3)}
        assert s.first_result_at == t0 and s.last_result_at == t0 + timedelta(seconds=10)

        hist = stats.label_histogram(session, "j1")
        assert [(h.label, h.count) for h in hist] == [("cat", 3), ("dog", 2)]
        assert hist[0].mean_score == pytest.approx(0.7) and hist[1].min_score == pytest.approx(0.2)

        samples = stats.label_samples(session, "j1", ["cat", "dog"], per_label=2)
        assert [Path(i.path).name for i in samples["cat"]] == ["a.jpg", "c.jpg"]  # most confident first
        assert [Path(i.path).name for i in samples["dog"]] == ["e.jpg", "d.jpg"]
        assert samples["cat"][0].top5[0] == [1, "cat", 0.9]

        low = stats.lowest_confidence(session, "j1", limit=2)
        assert [(Path(i.path).name, i.label) for i in low] == [("d.jpg", "dog"), ("b.jpg", "cat")]

        groups = stats.error_groups(session, "j1")
        assert [(g.reason, g.count) for g in groups] == [("empty file", 1), ("not a decodable image", 1)]
        assert groups[1].items[0][0] == "/photos/g.jpg" and "cannot identify" in groups[1].items[0][1]

        samples_ms = stats.stage_samples(session, "j1")
        assert sorted(samples_ms["queue_ms"]) == [10.0, 20.0, 30.0, 40.0, 50.0]
        assert set(samples_ms) == set(stats.STAGES)
        assert stats.stage_percentiles(session, "j1")["queue_ms"][50] == pytest.approx(30.0)
        assert len(stats.stage_samples(session, "j1", status=None)["decode_ms"]) == 7
        assert sorted(stats.score_values(session, "j1")) == pytest.approx([0.2, 0.5, 0.7, 0.8, 0.9])

        th = stats.throughput_by_worker(session, "j1", buckets=5)
        assert th.bucket_seconds == pytest.approx(2.0) and th.buckets == 6
        assert th.counts["h:1"] == [4, 0, 0, 0, 0, 0]  # a, b and both errors in the first 2 s
        assert th.counts["h:2"] == [0, 0, 0, 0, 2, 1]
        assert th.total_rates()[0] == pytest.approx(2.0)
    engine.dispose()


def test_changed_labels_match_images_by_path(db_url: str) -> None:
    engine = make_engine(db_url)
    ensure_schema(engine)
    with session_factory(engine).begin() as session:
        a = _make_job(session, "ja", ["same.jpg", "moved.jpg", "broke.jpg", "only_a.jpg"])
        b = _make_job(session, "jb", ["same.jpg", "moved.jpg", "broke.jpg", "only_b.jpg"])
        save_results(
            session,
            [
                _ok("ja", a["same.jpg"], "cat", 0.9, "h:1"),
                _ok("ja", a["moved.jpg"], "cat", 0.6, "h:1"),
                _ok("ja", a["broke.jpg"], "dog", 0.6, "h:1"),
                _ok("ja", a["only_a.jpg"], "dog", 0.6, "h:1"),
                _ok("jb", b["same.jpg"], "cat", 0.8, "h:1"),
                _ok("jb", b["moved.jpg"], "tiger cat", 0.55, "h:1"),
                _err("jb", b["broke.jpg"], "file not found"),
                _ok("jb", b["only_b.jpg"], "dog", 0.6, "h:1"),
            ],
        )
    with session_factory(engine)() as session:
        changes = changed_labels(session, "ja", "jb")
        assert [(Path(c.path).name, c.label_a, c.label_b, c.status_b) for c in changes] == [
            ("broke.jpg", "dog", None, "error"),
            ("moved.jpg", "cat", "tiger cat", "ok"),
        ]
        assert changes[1].score_a == pytest.approx(0.6) and changes[1].score_b == pytest.approx(0.55)
        assert changed_label_count(session, "ja", "jb") == 2
        assert common_image_count(session, "ja", "jb") == 3
        assert len(changed_labels(session, "ja", "jb", limit=1)) == 1
        assert stats.throughput_by_worker(session, "nope").buckets == 0
    engine.dispose()


def test_error_reason_keeps_the_kind_only() -> None:
    assert stats.error_reason("not a decodable image: cannot identify x") == "not a decodable image"
    assert stats.error_reason("empty file") == "empty file"
    assert stats.error_reason(None) == "unknown error"
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0
