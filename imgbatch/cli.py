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
# Piped output is read by people too (and by grep): don't squeeze tables to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

# More images than this and `run` prints a summary only, not every row.
PRINT_ROWS_UP_TO = 50


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


class Status(StrEnum):
    ok = "ok"
    error = "error"
    pending = "pending"


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
    from imgbatch.cpus import usable_cpus
    from producer.embedded import run as run_embedded
    from producer.submit import Submitted

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
    from db.engine import make_engine
    from producer.submit import record_job

    settings = get_settings()
    broker_url = _require_redis(settings, "submit")
    engine = make_engine(settings.db_url)  # record_job checks Redis and migrates the schema itself
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
    _feed(engine, broker_url, submitted.job_id, wait)
    print(submitted.job_id)


@app.command()
def resume(
    job: Annotated[str, typer.Argument(help="Job id, id prefix, or `latest`.")] = "latest",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is finished.")] = False,
) -> None:
    """Re-enqueue the images of a job that are still pending (e.g. after Redis restarted empty)."""
    from db.engine import session_factory
    from db.queries import get_job
    from worker.app import check_redis

    broker_url = _require_redis(get_settings(), "resume")
    check_redis(broker_url)
    engine = _engine()
    with session_factory(engine)() as session:
        job_id = get_job(session, job).id
    _feed(engine, broker_url, job_id, wait)
    print(job_id)


def _require_redis(settings: Settings, command: str) -> str:
    """The configured broker URL; `submit` and `resume` have no embedded Redis to fall back on."""
    if settings.redis_url is None:
        raise UserError(
            f"IMGBATCH_REDIS_URL is not set: `{command}` feeds running workers "
            "(use `imgbatch run` for the embedded mode)"
        )
    return settings.redis_url


def _feed(engine: Engine, broker_url: str, job_id: str, wait: bool) -> None:
    import time

    from producer.submit import feed

    settings = get_settings()
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


JobArg = Annotated[str, typer.Argument(help="Job id, id prefix, or `latest`.")]


@app.command()
def status(
    job: JobArg = "latest",
    watch: Annotated[bool, typer.Option("--watch", help="A live progress bar with rate and ETA.")] = False,
) -> None:
    """Counts and state of a job."""
    from db.queries import get_job, job_counts

    with _session() as session:
        found = get_job(session, job)
        job_id = found.id
        if watch:
            _watch(session, job_id)
        counts = job_counts(session, job_id)
        found = get_job(session, job_id)
        console.print(
            f"job {found.id}  state={found.state}  total={counts.total}  done={counts.done}  "
            f"error={counts.error}  pending={counts.pending}  model={found.model_sha256[:12]}"
        )


def _watch(session: Session, job_id: str, poll_s: float = 0.5) -> None:
    import time

    from db.queries import job_counts

    with _progress() as progress:
        task = progress.add_task(f"job {job_id[:8]}", total=None)
        while True:
            session.expire_all()
            counts = job_counts(session, job_id)
            session.rollback()  # end the read transaction so the next poll sees new rows
            progress.update(task, completed=counts.finished, total=counts.total)
            if counts.pending == 0:
                return
            time.sleep(poll_s)


@app.command()
def jobs(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many recent jobs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, for machines.")] = False,
) -> None:
    """Recent jobs with state, counts, images/s and model."""
    import json

    from db.queries import list_jobs

    with _session() as session:
        rows = list_jobs(session, limit)
    if as_json:
        for r in rows:
            print(
                json.dumps(
                    {
                        "id": r.job.id,
                        "created_at": r.job.created_at.isoformat(),
                        "state": r.job.state,
                        "total": r.counts.total,
                        "done": r.counts.done,
                        "error": r.counts.error,
                        "pending": r.counts.pending,
                        "images_per_second": r.images_per_second,
                        "model_sha256": r.job.model_sha256,
                        "roots": r.job.roots,
                    }
                )
            )
        return
    table = Table()
    for name in (
        "job",
        "created",
        "state",
        "images",
        "ok",
        "errors",
        "pending",
        "images/s",
        "model",
        "directories",
    ):
        table.add_column(name, no_wrap=name in ("job", "created"))
    for r in rows:
        table.add_row(
            r.job.id[:12],
            r.job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.job.state,
            str(r.counts.total),
            str(r.counts.done),
            str(r.counts.error),
            str(r.counts.pending),
            "" if r.images_per_second is None else f"{r.images_per_second:.1f}",
            r.job.model_sha256[:12],
            ", ".join(r.job.roots),
        )
    console.print(table)


@app.command()
def results(
    job: JobArg = "latest",
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    label: Annotated[str | None, typer.Option(help="Only images whose top-1 label is this.")] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Only images whose top-1 score is at least this.")
    ] = None,
    status_filter: Annotated[
        Status | None, typer.Option("--status", help="Only ok, error or pending images.")
    ] = None,
    path_glob: Annotated[
        str | None, typer.Option(help="Only paths matching this glob (whole path; `*` crosses directories).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="At most this many rows.")] = None,
) -> None:
    """Every image of a job with its label, score, error and stage timings, streamed in image order."""
    from db.queries import ResultFilter, get_job
    from imgbatch.results_view import result_dicts, write_csv, write_json, write_jsonl

    filters = ResultFilter(label, min_score, status_filter.value if status_filter else None, path_glob)
    with _session() as session:
        job_id = get_job(session, job).id
        rows = result_dicts(session, job_id, filters, limit)
        if fmt is Format.csv:
            write_csv(rows)
        elif fmt is Format.json:
            write_json(rows)
        elif fmt is Format.jsonl:
            write_jsonl(rows)
        else:
            _print_rows(rows)


@app.command()
def stats(
    job: JobArg = "latest",
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for machines.")] = False,
) -> None:
    """Per-stage latency p50/p95/p99, images/s over time, per-worker counts, errors by reason, labels."""
    from imgbatch.stats_view import job_stats, print_stats

    with _session() as session:
        from db.queries import get_job

        data = job_stats(session, get_job(session, job).id)
    if as_json:
        import json

        print(json.dumps(data, indent=2))
    else:
        print_stats(console, data)


@app.command()
def compare(
    job_a: Annotated[str, typer.Argument(help="First job (e.g. the FP32 run).")],
    job_b: Annotated[str, typer.Argument(help="Second job (e.g. the INT8 run of the same directory).")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Changed images to list.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, for machines.")] = False,
) -> None:
    """Top-1 agreement of two jobs over the images they share (matched by path), and what changed."""
    from db.queries import get_job
    from db.stats import changed_label_count, changed_labels, common_image_count

    with _session() as session:
        a, b = get_job(session, job_a).id, get_job(session, job_b).id
        common = common_image_count(session, a, b)
        changed = changed_label_count(session, a, b)
        listed = changed_labels(session, a, b, limit=limit)
    if common == 0:
        raise UserError(f"jobs {a[:12]} and {b[:12]} share no image with a result (matched by path)")
    agreement = (common - changed) / common
    if as_json:
        import json

        print(
            json.dumps(
                {
                    "job_a": a,
                    "job_b": b,
                    "common": common,
                    "changed": changed,
                    "agreement": agreement,
                    "changes": [
                        {
                            "path": c.path,
                            "a": {"status": c.status_a, "label": c.label_a, "score": c.score_a},
                            "b": {"status": c.status_b, "label": c.label_b, "score": c.score_b},
                        }
                        for c in listed
                    ],
                },
                indent=2,
            )
        )
        return
    console.print(f"{common} images in both jobs; top-1 agreement {agreement:.2%} ({changed} changed)")
    if listed:
        table = Table(title=f"changed ({len(listed)} of {changed} shown)")
        for name in ("path", f"{a[:8]} label", "score", f"{b[:8]} label", "score"):
            table.add_column(name)
        for c in listed:
            table.add_row(
                c.path, c.label_a or c.status_a, _score(c.score_a), c.label_b or c.status_b, _score(c.score_b)
            )
        console.print(table)


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


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
from imgbatch.bench.cli import bench_command  # noqa: E402
from imgbatch.report.cli import report_command  # noqa: E402

app.command("export")(export_command)
app.add_typer(db_app, name="db")
app.command("report")(report_command)
app.command("bench")(bench_command)


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
