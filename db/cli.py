"""`imgbatch db ...`: schema migrations."""

from __future__ import annotations

import typer
from rich.console import Console

from imgbatch.settings import get_settings

db_app = typer.Typer(help="Database schema: migrations with Alembic.", no_args_is_help=True)
console = Console()


@db_app.command()
def upgrade() -> None:
    """Migrate IMGBATCH_DATABASE_URL to the newest schema (safe to run from many hosts at once)."""
    from db.engine import make_engine
    from db.migrate import head
    from db.migrate import upgrade as run_upgrade

    engine = make_engine(get_settings().db_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        applied = run_upgrade(engine)
    except Exception as exc:  # turned into one line by the CLI's error handling
        from db.engine import database_error

        raise database_error(engine, exc) from exc
    console.print(f"{where}: {'migrated to' if applied else 'already at'} revision {head()}")


@db_app.command()
def current() -> None:
    """Show the database's schema revision and the newest one this imgbatch knows."""
    from db.engine import make_engine
    from db.migrate import current as current_revision
    from db.migrate import head

    engine = make_engine(get_settings().db_url)
    with engine.connect() as conn:
        console.print(f"current {current_revision(conn) or 'none'}, head {head()}")
