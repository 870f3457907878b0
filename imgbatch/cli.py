"""The `imgbatch` command line. Errors a user can fix are one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from imgbatch.errors import UserError
from imgbatch.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

app = typer.Typer(
    help="Batch image classification with a quantized ONNX model on Celery workers; results in SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

# More images than this and `run` prints a summary only, not every row.
PRINT_ROWS_UP_TO = 50


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="ONNX model (default: IMGBATCH_MODEL or the built one).")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", "-b", min=1, max=1024, help="Images per task message.")
]


NewOpt = Annotated[
    bool, typer.Option("--new", help="Start a new job even if an unfinished one covers the same directories.")
]


@app.command()
def run(
    directories: Annotated[
        list[Path] | None, typer.Argument(help="Directories of images (default: the bundled sample photos).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per usable core)."),
    ] = None,
    model: ModelOpt = None,
    batch_size: BatchOpt = None,
    new: NewOpt = False,
) -> None:
    """Classify directories end to end: private Redis (unless IMGBATCH_REDIS_URL), local workers, SQLite."""
    from producer.embedded import run as run_embedded
    from producer.submit import Submitted
    from worker.runtime import usable_cpus

    settings = get_settings()
    dirs: list[str | Path] = list(directories or [])
    if not dirs:
        from imgbatch.samples import write_photos

        sample_dir = settings.data_dir / "samples"
        write_photos(sample_dir)
        dirs = [sample_dir]
        console.print(f"No directory given: classifying the bundled sample photos in {sample_dir}")
    # The bar starts once the job is recorded, so a bad directory or model prints its one line only.
    progress = _progress()
    task = progress.add_task("classifying", total=None)

    def submitted(s: Submitted) -> None:
        if s.resumed:
            console.print(
                f"Resuming unfinished job {s.job_id} over the same directories (--new to start over)"
            )
        progress.update(task, total=s.images, description=f"job {s.job_id[:8]}")
        progress.start()

    try:
        outcome = run_embedded(
            settings,
            dirs,
            workers or usable_cpus(),
            model or settings.model_path,
            batch_size or settings.batch_size,
            new=new,
            on_submitted=submitted,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    finally:
        progress.stop()
    _print_summary(outcome.submitted.job_id, outcome.seconds)


@app.command()
def submit(
    directories: Annotated[list[Path], typer.Argument(help="Directories of images, walked recursively.")],
    model: ModelOpt = None,
    batch_size: BatchOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait with a progress bar until the job is finished.")
    ] = False,
    new: NewOpt = False,
) -> None:
    """Record a job and feed its images to IMGBATCH_REDIS_URL for running workers.

    Keeps a bounded number of batches in Redis, so it returns once every batch is queued (or, with
    --wait, once every image is done). Re-running it after a crash continues the unfinished job.
    Prints the job id as the last line of stdout.
    """
    from producer.submit import record_job

    settings = get_settings()
    broker_url = _require_redis(settings, "submit")
    engine = _engine()
    submitted = record_job(
        list(directories),
        model or settings.model_path,
        batch_size or settings.batch_size,
        engine,
        broker_url,
        new=new,
    )
    verb = "resuming unfinished job" if submitted.resumed else "recorded job"
    err_console.print(f"{verb} {submitted.job_id} with {submitted.images} images")
    _feed(submitted.job_id, wait)
    print(submitted.job_id)


@app.command()
def resume(
    job: Annotated[str, typer.Argument(help="Job id, id prefix, or `latest`.")] = "latest",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is finished.")] = False,
) -> None:
    """Re-enqueue the images of a job that are still pending (e.g. after Redis restarted empty)."""
    from db.queries import get_job

    with _session() as session:
        job_id = get_job(session, job).id
    _feed(job_id, wait)
    print(job_id)


def _require_redis(settings: Settings, command: str) -> str:
    if settings.redis_url is None:
        raise UserError(
            f"IMGBATCH_REDIS_URL is not set: `{command}` feeds running workers "
            "(use `imgbatch run` for the embedded mode)"
        )
    from worker.app import check_redis

    check_redis(settings.redis_url)
    return settings.redis_url


def _feed(job_id: str, wait: bool) -> None:
    import time

    from producer.submit import feed

    settings = get_settings()
    broker_url = _require_redis(settings, "resume")
    engine = _engine()
    start = time.monotonic()
    if not wait:
        feed(settings, engine, job_id, broker_url, wait=False)
        return
    with _progress() as progress:
        task = progress.add_task(f"job {job_id[:8]}", total=None)
        feed(
            settings,
            engine,
            job_id,
            broker_url,
            wait=True,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    _print_summary(job_id, time.monotonic() - start, show_rows=False)


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", min=1, help="Pool processes (default: one per usable core)."),
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
) -> None:
    """Run a Celery worker: one onnxruntime session per pool process, results written to the database."""
    from worker.main import start_worker

    start_worker(concurrency, loglevel)


@app.command()
def status(job: Annotated[str, typer.Argument(help="Job id, id prefix, or `latest`.")] = "latest") -> None:
    """Counts and state of a job."""
    from db.queries import get_job, job_counts

    with _session() as session:
        found = get_job(session, job)
        counts = job_counts(session, found.id)
        console.print(
            f"job {found.id}  state={found.state}  total={counts.total}  done={counts.done}  "
            f"error={counts.error}  pending={counts.pending}  model={found.model_sha256[:12]}"
        )


@app.command()
def results(
    job: Annotated[str, typer.Argument(help="Job id, id prefix, or `latest`.")] = "latest",
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Every image of a job with its label, score, error and stage timings."""
    from db.queries import get_job
    from imgbatch.results_view import result_dicts, write_csv, write_json

    with _session() as session:
        job_id = get_job(session, job).id
        rows = result_dicts(session, job_id)
        if fmt is Format.csv:
            write_csv(rows)
        elif fmt is Format.json:
            write_json(rows)
        else:
            _print_rows(rows)


@app.command()
def samples(
    directory: Annotated[Path, typer.Argument(help="Where to write the JPEG files.")],
    count: Annotated[
        int, typer.Option("--count", "-n", min=0, help="Variants to make; 0 writes the originals only.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the variants.")] = 0,
    max_side: Annotated[int, typer.Option(help="Largest side of a variant, pixels.")] = 1024,
) -> None:
    """Write real photos (scikit-image's samples, or crops/flips/rescales of them) for demos and tests."""
    from imgbatch.samples import make_variants, write_photos

    paths = make_variants(directory, count, seed, max_side=max_side) if count else write_photos(directory)
    console.print(f"wrote {len(paths)} photos to {directory}")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def _engine() -> Engine:
    from db.engine import ensure_schema, make_engine

    engine = make_engine(get_settings().db_url)
    ensure_schema(engine)
    return engine


def _session() -> Session:
    from db.engine import session_factory

    return session_factory(_engine())()


def _print_summary(job_id: str, seconds: float, show_rows: bool = True) -> None:
    from db.queries import get_job, job_counts, top_labels
    from imgbatch.results_view import result_dicts

    with _session() as session:
        counts = job_counts(session, job_id)
        if show_rows and counts.total <= PRINT_ROWS_UP_TO:
            roots = get_job(session, job_id).roots
            _print_rows(result_dicts(session, job_id), roots[0] if len(roots) == 1 else None)
        labels = top_labels(session, job_id)
    rate = counts.finished / seconds if seconds > 0 else 0.0
    console.print(
        f"job {job_id}: {counts.total} images, {counts.done} ok, {counts.error} errors, "
        f"{seconds:.1f} s, {rate:.1f} images/s"
    )
    if labels:
        console.print("top labels: " + ", ".join(f"{label} ({n})" for label, n in labels))


def _print_rows(rows, root: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """A table of results; paths relative to `root` when the job has a single directory."""
    import os

    table = Table(show_lines=False, title=root)
    table.add_column("path", no_wrap=True)
    for name in ("status", "label", "score", "error", "decode ms", "infer ms"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(
            os.path.relpath(row["path"], root) if root else row["path"],
            row["status"],
            row["label"] or "",
            "" if row["score"] is None else f"{row['score']:.3f}",
            row["error"] or "",
            "" if row["decode_ms"] is None else f"{row['decode_ms']:.1f}",
            "" if row["infer_ms"] is None else f"{row['infer_ms']:.1f}",
        )
    console.print(table)


# Commands whose code lives with their stage. Their modules import torch, matplotlib etc. only
# inside the command function, so `imgbatch --help` and the workers stay light.
from db.cli import db_app  # noqa: E402
from export.cli import export_command  # noqa: E402
from imgbatch.report.cli import report_command  # noqa: E402

app.command("export")(export_command)
app.add_typer(db_app, name="db")
app.command("report")(report_command)


def main() -> None:
    """Entry point: user errors become one line on stderr, never a traceback.

    Typer's standalone mode handles usage errors and Ctrl-C itself (exit 2 and 1); our own errors
    and unavailable databases are turned into one line here.
    """
    from sqlalchemy.exc import OperationalError as DatabaseError

    command = typer.main.get_command(app)
    try:
        command.main(prog_name="imgbatch", standalone_mode=True)
    except UserError as exc:
        print(f"imgbatch: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DatabaseError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "unknown error"
        print(f"imgbatch: error: database unavailable: {first}", file=sys.stderr)
        sys.exit(2)
