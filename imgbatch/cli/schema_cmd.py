"""`imgbatch db ...`: schema migrations."""

from __future__ import annotations

import typer

from imgbatch.cli.console import console, settings
from imgbatch.cli.params import CONTEXT

db_app = typer.Typer(
    help="Database schema: migrations with Alembic.\n\nExample: imgbatch db upgrade",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)


@db_app.command()
def upgrade() -> None:
    """Migrate IMGBATCH_DATABASE_URL to the newest schema (safe to run from many hosts at once).

    Example: IMGBATCH_DATABASE_URL=postgresql://imgbatch@db/imgbatch imgbatch db upgrade
    """
    from imgbatch.db.engine import database_error, make_engine
    from imgbatch.db.migrate import head
    from imgbatch.db.migrate import upgrade as run_upgrade

    engine = make_engine(settings().db_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        applied = run_upgrade(engine)
    except Exception as exc:  # turned into one line by the CLI's error handling
        raise database_error(engine, exc) from exc
    console.print(f"{where}: {'migrated to' if applied else 'already at'} revision {head()}", markup=False)


@db_app.command()
def current() -> None:
    """Show the database's schema revision and the newest one this imgbatch knows.

    Example: imgbatch db current
    """
    from imgbatch.db.engine import make_engine
    from imgbatch.db.migrate import current as current_revision
    from imgbatch.db.migrate import head

    engine = make_engine(settings().db_url)
    with engine.connect() as conn:
        console.print(f"current {current_revision(conn) or 'none'}, head {head()}", markup=False)
