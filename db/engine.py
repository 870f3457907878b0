"""Engines and sessions. SQLite gets WAL and a busy timeout so several worker processes can write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from imgbatch.core.errors import UserError
from imgbatch.core.settings import Settings
from imgbatch.core.urls import check_database_url, redact_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


def engine_for(settings: Settings) -> Engine:
    """The engine of the configured database; only the default SQLite file's directory is created."""
    return make_engine(settings.db_url, create_parent=settings.database_url is None)


def make_engine(url: str, create_parent: bool = False) -> Engine:
    """An engine for `url`; UserError (one line, password hidden) for a malformed URL or a SQLite file
    whose directory does not exist (created only with `create_parent`)."""
    url = check_database_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise UserError(f"invalid database URL {redact_url(url)!r}: {exc}") from exc
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            parent = Path(parsed.database).parent
            if create_parent:
                parent.mkdir(parents=True, exist_ok=True)
            elif not parent.is_dir():
                raise UserError(f"cannot use database {redact_url(url)}: no such directory {parent}")
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough under WAL, much faster commits
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA case_sensitive_like=ON")  # --path-glob matches as on PostgreSQL
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def ensure_schema(engine: Engine) -> None:
    """Migrate the schema to head (a no-op when it is); errors become one line naming the redacted URL."""
    from imgbatch.db.migrate import upgrade

    try:
        upgrade(engine)
    except OperationalError as exc:
        raise database_error(engine, exc) from exc


def database_error(engine: Engine, exc: BaseException) -> UserError:
    """One readable line for a database that can't be reached or migrated; the password hidden."""
    where = redact_url(engine.url.render_as_string(hide_password=False))
    reason = _first_line(exc.orig if isinstance(exc, OperationalError) else exc)
    return UserError(f"cannot use database {where}: {reason}")


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else "unknown error"
