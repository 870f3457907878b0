"""Alembic migrations: they build exactly the models' schema, on SQLite and PostgreSQL, and several
processes upgrading one fresh database at once all succeed."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from db.engine import make_engine
from db.migrate import current, head, upgrade
from db.models import Base


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
        f"from db.engine import make_engine; from db.migrate import upgrade; upgrade(make_engine({db_url!r}))"
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
