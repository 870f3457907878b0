"""Alembic migrations: they build exactly the models' schema, on SQLite and PostgreSQL, and several
processes upgrading one fresh database at once all succeed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from conftest import imgbatch_env, run_cli
from imgbatch.db.engine import make_engine, session_factory
from imgbatch.db.jobs import find_job, job_counts
from imgbatch.db.migrate import current, head, upgrade
from imgbatch.db.models import Base, Image, ImageStatus, JobState


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    assert upgrade(engine) is True
    assert upgrade(engine) is False  # at head: nothing to do
    with engine.connect() as conn:
        assert current(conn) == head()
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("results")}
    assert diff == [], diff
    assert {"ix_results_job_label", "ix_results_job_status", "ix_results_job_score"} <= indexes
    engine.dispose()


def test_concurrent_upgrades_of_one_fresh_database(db_url: str) -> None:
    code = (
        f"from imgbatch.db.engine import make_engine; from imgbatch.db.migrate import upgrade; "
        f"upgrade(make_engine({db_url!r}))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert current(conn) == head()
    engine.dispose()


def test_a_database_of_the_first_schema_upgrades_and_keeps_its_rows(db_url: str, tmp_path: Path) -> None:
    """A database written before image statuses were enums ('done' for a classified image) is
    migrated by `imgbatch db upgrade`: same rows, the one spelling 'ok'."""
    from alembic import command

    from imgbatch.db.migrate import alembic_config

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.execute(
            text(
                "INSERT INTO jobs (id, created_at, state, roots, model_path, model_sha256, batch_size, "
                "total_images) VALUES ('old', CURRENT_TIMESTAMP, 'done', '[\"/x\"]', '/m.onnx', :sha, 8, 3)"
            ),
            {"sha": "a" * 64},
        )
        for path, state in (("/x/a.jpg", "done"), ("/x/b.jpg", "error"), ("/x/c.jpg", "pending")):
            conn.execute(
                text("INSERT INTO images (job_id, path, state) VALUES ('old', :p, :s)"),
                {"p": path, "s": state},
            )
    proc = run_cli(["db", "upgrade"], imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url))
    assert proc.returncode == 0, proc.stderr
    assert f"migrated to revision {head()}" in proc.stdout
    with session_factory(engine)() as s:
        states = dict(s.execute(select(Image.path, Image.state)).all())
        assert states == {
            "/x/a.jpg": ImageStatus.OK,
            "/x/b.jpg": ImageStatus.ERROR,
            "/x/c.jpg": ImageStatus.PENDING,
        }
        assert find_job(s, "old").state is JobState.DONE
        assert job_counts(s, "old").ok == 1
    engine.dispose()


def test_a_database_of_revision_0002_upgrades_its_paths_to_the_lossless_encoding(
    db_url: str, tmp_path: Path
) -> None:
    """0003: a name that was not UTF-8 (kept as bytes in raw_path, shown with backslashreplace) and a
    name with a literal backslash become the injective `ls -b` text; raw_path goes; rows are kept."""
    from alembic import command

    from imgbatch.core.names import decode_path
    from imgbatch.db.migrate import alembic_config

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        conn.execute(
            text(
                "INSERT INTO jobs (id, created_at, state, roots, model_path, model_sha256, batch_size, "
                "total_images) VALUES ('old', CURRENT_TIMESTAMP, 'running', :roots, '/m.onnx', :sha, 8, 3)"
            ),
            {"sha": "a" * 64, "roots": '["/x\\\\y"]'},
        )
        rows = [
            ("/x\\y/caf\\xe9.jpg", b"/x\\y/caf\xe9.jpg", "ok"),  # not UTF-8: its bytes were in raw_path
            ("/x\\y/plain.jpg", None, "pending"),  # a backslash in the directory name
            ("/x\\y/\u00e9t\u00e9.jpg", None, "error"),
        ]
        for path, raw, state in rows:
            conn.execute(
                text("INSERT INTO images (job_id, path, raw_path, state) VALUES ('old', :p, :r, :s)"),
                {"p": path, "r": raw, "s": state},
            )
    proc = run_cli(["db", "upgrade"], imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url))
    assert proc.returncode == 0, proc.stderr
    with session_factory(engine)() as s:
        stored = dict(s.execute(select(Image.path, Image.state)).all())
        job = find_job(s, "old")
        assert job.roots == ["/x\\\\y"] and job.state is JobState.RUNNING
    assert stored == {
        "/x\\\\y/caf\\xe9.jpg": ImageStatus.OK,
        "/x\\\\y/plain.jpg": ImageStatus.PENDING,
        "/x\\\\y/\u00e9t\u00e9.jpg": ImageStatus.ERROR,
    }
    assert decode_path("/x\\\\y/caf\\xe9.jpg") == b"/x\\y/caf\xe9.jpg"
    with engine.connect() as conn:
        assert "raw_path" not in {c["name"] for c in inspect(conn).get_columns("images")}
    engine.dispose()
