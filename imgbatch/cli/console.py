"""What every command uses to talk to the user and reach the database."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from imgbatch.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

# Piped output is read by people too (and by grep): don't squeeze tables to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def settings() -> Settings:
    """The settings of this command, read once from IMGBATCH_* variables."""
    return get_settings()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def engine(config: Settings | None = None) -> Engine:
    """An engine on the configured database, migrated to the newest schema."""
    from imgbatch.db.engine import engine_for, ensure_schema

    made = engine_for(config or settings())
    ensure_schema(made)
    return made


def sessions(config: Settings | None = None) -> sessionmaker[Session]:
    """Sessions on the configured database, for commands that commit a chunk per transaction."""
    from imgbatch.db.engine import session_factory

    return session_factory(engine(config))


def session(config: Settings | None = None) -> Session:
    return sessions(config)()
