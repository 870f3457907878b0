"""The `imgbatch` command line: one Typer app, one module per command group.

Errors a user can fix are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from imgbatch.cli import bench, export_cmd, jobs, report, run
from imgbatch.cli.params import CONTEXT
from imgbatch.cli.schema_cmd import db_app
from imgbatch.core.errors import UserError

app = typer.Typer(
    help="Batch image classification with a quantized ONNX model on Celery workers; results in SQL."
    "\n\nExample: imgbatch run ~/photos",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: paragraphs re-wrapped to the terminal, flags shown bare.
    rich_markup_mode=None,
    context_settings=CONTEXT,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        # The installed distribution's version (importing the `imgbatch` package from here would
        # make the command line and the package that runs it import each other).
        print(f"imgbatch {version('imgbatch')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", metavar="", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """Batch image classification with a quantized ONNX model on Celery workers; results in SQL.

    Example: imgbatch run ~/photos
    """


# In the order a user meets them. Heavy imports (torch, matplotlib, Ray) happen inside the commands.
COMMANDS: dict[str, Callable[..., None]] = {
    "run": run.run,
    "submit": run.submit,
    "resume": run.resume,
    "worker": run.worker,
    "cancel": run.cancel,
    "retry": run.retry,
    "delete": run.delete,
    "status": jobs.status,
    "jobs": jobs.jobs,
    "results": jobs.results,
    "stats": jobs.stats,
    "compare": jobs.compare,
    "report": report.report,
    "export": export_cmd.export_command,
    "bench": bench.bench_command,
    "samples": run.samples,
}
for name, command in COMMANDS.items():
    app.command(name, context_settings=CONTEXT)(command)
app.add_typer(db_app, name="db")


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback.

    Typer's standalone mode handles usage errors itself (exit 2); our own errors, unknown jobs and
    unavailable databases are turned into one line here.
    """
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError as DatabaseError

    from imgbatch.core.names import shown
    from imgbatch.db.jobs import NotFound

    command = typer.main.get_command(app)
    try:
        command.main(prog_name="imgbatch", standalone_mode=True)
    except (UserError, NotFound) as exc:
        _fail(shown(exc.args[0] if exc.args else exc))
    except DatabaseError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "unknown error"
        _fail(f"database unavailable: {shown(first)}")
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = "IMGBATCH_" + str(problem["loc"][0]).upper() if problem["loc"] else "a setting"
        _fail(f"invalid {name}: {shown(problem['msg'])}")


def _fail(line: str) -> None:
    print(f"imgbatch: error: {line}", file=sys.stderr)
    sys.exit(2)
