"""Commands that start work: run (embedded), submit, resume, worker, samples."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from imgbatch.cli.console import console, err_console, progress_bar, session, sessions, settings
from imgbatch.cli.params import BatchOpt, DecodeOpt, JobArg, ModelOpt, NewFlag, RuntimeOpt, WaitFlag
from imgbatch.core.errors import UserError
from imgbatch.core.names import counted, plural, shown

if TYPE_CHECKING:
    from rich.progress import Progress
    from sqlalchemy import Engine

    from imgbatch.core.settings import Settings
    from imgbatch.producer.submit import Submitted
    from imgbatch.worker.ledger import Ledger

# More images than this and `run` prints a summary only, not every row.
PRINT_ROWS_UP_TO = 50


def run(
    directories: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="DIR|URL",
            help="Directories of images, or s3:// (gs://, az://) prefixes "
            "(default: the bundled sample photos).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", metavar="N", min=1, help="Worker processes (default: one per usable core)."
        ),
    ] = None,
    model: ModelOpt = None,
    batch_size: BatchOpt = None,
    new: NewFlag = False,
    decode: DecodeOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Classify directories (or object-store prefixes) here and now, then print a summary.

    Starts a private Redis (unless IMGBATCH_REDIS_URL is set) and local worker processes, records
    results in the database (SQLite in the data dir by default) and stops everything at the end.

    Example: imgbatch run ~/photos --workers 2;  imgbatch run s3://bucket/photos/
    """
    from imgbatch.core.cpus import usable_cpus
    from imgbatch.producer.embedded import run as run_embedded

    config = with_choices(settings(), runtime, decode)
    dirs: list[str | Path] = list(directories or []) or [_sample_dir(config)]
    # Shown at once, and gone without a trace if a directory is bad (its error stays the one line);
    # the bar replaces it as soon as the job is recorded.
    starting = err_console.status("starting Redis and the workers, scanning the directories ...")
    starting.start()
    bar = progress_bar()
    task = bar.add_task("classifying", total=None)
    started: dict[str, int] = {}

    def on_submitted(sub: Submitted) -> None:
        starting.stop()
        started["finished"] = sub.finished
        if sub.resumed:
            console.print(
                f"Resuming unfinished job {sub.job_id} over the same directories (--new to start over)"
            )
        bar.update(task, total=sub.images, completed=sub.finished, description=f"job {sub.job_id[:8]}")
        bar.start()

    def on_progress(finished: int, total: int) -> None:
        bar.update(task, completed=finished, total=total)

    def on_notice(text: str) -> None:
        err_console.print(Text(shown(text)), soft_wrap=True)

    try:
        outcome = run_embedded(
            config,
            dirs,
            workers or usable_cpus(),
            model or config.model_path,
            batch_size or config.batch_size,
            new=new,
            on_submitted=on_submitted,
            on_progress=on_progress,
            on_notice=on_notice,
        )
    except KeyboardInterrupt:
        starting.stop()
        _stop(bar)
        raise _interrupted() from None
    finally:
        starting.stop()
        _stop(bar)
    print_summary(outcome.submitted.job_id, outcome.seconds, since_finished=started.get("finished", 0))


def _stop(bar: Progress) -> None:
    """Stop the bar if it was started: off a terminal, Rich's stop prints a line even for a bar that
    never was, which came out as an empty line before an error."""
    if bar.live.is_started:
        bar.stop()


def _interrupted() -> typer.Exit:
    err_console.print(
        "interrupted: workers stopped; finished images are kept, and `imgbatch run` on the same "
        "directories resumes the job"
    )
    return typer.Exit(130)


def with_choices(config: Settings, runtime: str | None, decode: str | None = None) -> Settings:
    """The settings with --runtime and --decode, when given, in place of IMGBATCH_RUNTIME/_DECODE."""
    if decode is not None:
        config = config.model_copy(update={"decode": decode})
    if runtime is None:
        return config
    from imgbatch.core.runtimes import require_runtime

    require_runtime(runtime)
    return config.model_copy(update={"runtime": runtime})


def _sample_dir(config: Settings) -> Path:
    from imgbatch.core.samples import write_photos

    sample_dir = config.data_dir / "samples"
    write_photos(sample_dir)
    console.print(Text(f"No directory given: classifying the bundled sample photos in {shown(sample_dir)}"))
    return sample_dir


def submit(
    directories: Annotated[
        list[str],
        typer.Argument(
            metavar="DIR|URL",
            help="Directories of images, walked recursively, or s3:// (gs://, az://) prefixes, listed "
            "recursively; store credentials come from the store's usual environment (AWS_*...).",
        ),
    ],
    model: ModelOpt = None,
    batch_size: BatchOpt = None,
    wait: WaitFlag = False,
    new: NewFlag = False,
) -> None:
    """Record a job for the workers at IMGBATCH_REDIS_URL.

    Scans the directories (lists the prefixes) into the database, a chunk at a time, and prints
    the job id as the last line of stdout. The workers send, recover and finish the job on their
    own: nobody needs to wait. With --wait it shows progress until the job is done. Re-running it
    after a crash continues the unfinished job.

    Example: imgbatch submit /data/photos --wait;  imgbatch submit s3://bucket/photos/
    """
    from imgbatch.db.engine import engine_for
    from imgbatch.producer.submit import record_job

    config = settings()
    broker_url = _require_redis(config, "submit")
    engine = engine_for(config)  # record_job checks Redis and migrates the schema itself
    model_path = model or config.model_path
    submitted = record_job(
        list(directories),
        model_path,
        batch_size or config.batch_size,
        engine,
        broker_url,
        new=new,
        scan_chunk=config.scan_chunk,
    )
    verb = "resuming unfinished job" if submitted.resumed else "recorded job"
    err_console.print(f"{verb} {submitted.job_id} with {counted(submitted.images, 'image')}", markup=False)
    if wait:
        _watch(config, engine, broker_url, submitted.job_id, submitted.finished)
    print(submitted.job_id)


def resume(job: JobArg = "latest", wait: WaitFlag = False) -> None:
    """Ask the workers to send a job's pending images again from the start.

    They do it on their own when nothing of a job is in flight; this only makes it happen now.

    Example: imgbatch resume latest --wait
    """
    from imgbatch.cli.console import engine
    from imgbatch.core.services import check_redis
    from imgbatch.db.engine import session_factory
    from imgbatch.db.jobs import find_job, job_counts
    from imgbatch.db.models import JobState

    config = settings()
    broker_url = _require_redis(config, "resume")
    check_redis(broker_url)
    migrated = engine(config)
    with session_factory(migrated)() as s:
        found = find_job(s, job)
        job_id, state = found.id, found.state
        finished = job_counts(s, job_id).finished
    if state == JobState.CANCELLED:
        # Cancelled is for good (see `cancel`): saying "sent again" and leaving it cancelled misled.
        raise UserError(
            f"job {job_id} is cancelled: nothing is sent again; submit its directories with --new"
        )
    _ledger(config, broker_url).reset_cursor(job_id)
    err_console.print(f"job {job_id}: {state}; pending images will be sent again", markup=False)
    if wait:
        _watch(config, migrated, broker_url, job_id, finished)
    print(job_id)


def cancel(job: JobArg) -> None:
    """Cancel a job: its pending images are no longer sent.

    Batches already on their way finish; the job's state becomes cancelled for good: submit the
    directories again (with --new) for a new job.

    Example: imgbatch cancel 3f2a
    """
    config = settings()
    job_id, cancelled = _cancel(config, job)
    if not cancelled:
        raise UserError(f"job {job_id} is not scanning or running: nothing to cancel")
    print(job_id)


def delete(
    job: JobArg,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete a job that has results without asking for this flag.")
    ] = False,
) -> None:
    """Delete a job with its images and results.

    Rows go a chunk per transaction, so other jobs' workers are never held up; the job's keys in
    Redis go too. A running job is cancelled first. From a terminal, a job that has results is
    only deleted with --yes.

    Example: imgbatch delete 3f2a --yes
    """
    import sys

    from imgbatch.db.jobs import find_job, job_counts
    from imgbatch.db.writes import delete_job_chunk

    config = settings()
    made = sessions(config)
    with made() as s:
        found = find_job(s, job).id
        finished = job_counts(s, found).finished
    if finished and not yes and sys.stdin.isatty():
        raise UserError(f"job {found} has {finished} {plural(finished, 'result')}: pass --yes to delete it")
    job_id, _ = _cancel(config, found)
    deleted = 0
    while True:
        with made.begin() as s:
            n = delete_job_chunk(s, job_id)
        if not n:
            break
        deleted += n
    if config.redis_url:
        _forget(config, config.redis_url, job_id)
    err_console.print(f"deleted job {job_id} and its {counted(deleted, 'image')}", markup=False)


def retry(
    job: JobArg,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="TEXT", help="Only error rows whose error starts with TEXT."),
    ] = None,
    wait: WaitFlag = False,
) -> None:
    """Classify a job's failed images again.

    Their error rows are deleted and they become pending (a chunk per transaction); the job goes
    back to running and the workers pick them up. Each image still ends with exactly one row.

    Example: imgbatch retry latest --reason "transient failure"
    """
    from imgbatch.cli.console import engine
    from imgbatch.db.engine import session_factory
    from imgbatch.db.images import error_image_ids
    from imgbatch.db.jobs import find_job, job_counts
    from imgbatch.db.models import JobState
    from imgbatch.db.writes import retry_chunk

    config = settings()
    broker_url = _require_redis(config, "retry")
    migrated = engine(config)
    made = session_factory(migrated)
    with made() as s:
        found = find_job(s, job)
        job_id = found.id
        if found.state == JobState.CANCELLED:
            raise UserError(f"job {job_id} is cancelled: submit its directories again for a new job")
        if not error_image_ids(s, job_id, reason, 0, 1):
            starting = f" whose error starts with {reason!r}" if reason else ""
            raise UserError(f"job {job_id} has no error rows{starting}")
    after, retried = 0, 0
    while True:
        with made.begin() as s:
            after, n = retry_chunk(s, job_id, reason, after)
        if not n:
            break
        retried += n
    with made() as s:
        finished = job_counts(s, job_id).finished
    ledger = _ledger(config, broker_url)
    ledger.reset_counts(job_id)
    ledger.reset_cursor(job_id)
    err_console.print(f"job {job_id}: {counted(retried, 'image')} pending again", markup=False)
    if wait:
        _watch(config, migrated, broker_url, job_id, finished)
    print(job_id)


def _cancel(config: Settings, job: str) -> tuple[str, bool]:
    """(job id, whether it was cancelled now): its pending images are no longer sent."""
    from imgbatch.db.jobs import find_job
    from imgbatch.db.writes import cancel_job

    made = sessions(config)
    with made() as s:
        job_id = find_job(s, job).id
    with made.begin() as s:
        cancelled = cancel_job(s, job_id)
    if cancelled and config.redis_url:
        _forget(config, config.redis_url, job_id)
    return job_id, cancelled


def _ledger(config: Settings, broker_url: str) -> Ledger:
    from imgbatch.worker.ledger import Ledger

    return Ledger.from_url(broker_url, config.queue_name)


def _forget(config: Settings, broker_url: str, job_id: str) -> None:
    import contextlib

    import redis

    # Stale keys of a job that is not active are never read by the dispatcher anyway.
    with contextlib.suppress(redis.exceptions.RedisError, OSError):
        _ledger(config, broker_url).forget_job(job_id)


def _require_redis(config: Settings, command: str) -> str:
    """The configured broker URL; `submit` and `resume` have no embedded Redis to fall back on."""
    if config.redis_url is None:
        raise UserError(
            f"IMGBATCH_REDIS_URL is not set: `{command}` works with running workers "
            "(use `imgbatch run` for the embedded mode)"
        )
    return config.redis_url


def _watch(config: Settings, engine: Engine, broker_url: str, job_id: str, finished: int) -> None:
    from imgbatch.producer.watch import Watcher

    start = time.monotonic()
    with progress_bar() as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=None)
        Watcher(config, engine, broker_url).watch(
            job_id,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            on_notice=lambda text: bar.console.print(Text(shown(text)), soft_wrap=True),
        )
    print_summary(job_id, time.monotonic() - start, since_finished=finished, show_rows=False)


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", metavar="N", min=1, help="Pool processes (default: one per usable core)."
        ),
    ] = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", metavar="LEVEL", help="DEBUG, INFO, WARNING...")
    ] = "INFO",
    decode: DecodeOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Run a Celery worker.

    One model session per pool process (onnxruntime or OpenVINO, see --runtime); results are written
    to the database.

    Example: IMGBATCH_REDIS_URL=redis://queue:6379/0 imgbatch worker -c 4
    """
    from imgbatch.worker.main import start_worker

    start_worker(with_choices(settings(), runtime, decode), concurrency, loglevel)


def samples(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write the JPEG files.")],
    count: Annotated[
        int,
        typer.Option(
            "--count", "-n", metavar="N", min=0, help="Variants to make; 0 writes the originals only."
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(metavar="N", help="Random seed of the variants.")] = 0,
    max_side: Annotated[int, typer.Option(metavar="PIXELS", help="Largest side of a variant.")] = 1024,
) -> None:
    """Write real photos for demos and tests.

    scikit-image's samples, or crops, flips and rescales of them.

    Example: imgbatch samples /tmp/photos -n 500
    """
    from imgbatch.core.samples import make_variants, write_photos

    paths = make_variants(directory, count, seed, max_side=max_side) if count else write_photos(directory)
    console.print(Text(f"wrote {len(paths)} photos to {shown(directory)}"))


def print_summary(job_id: str, seconds: float, since_finished: int = 0, show_rows: bool = True) -> None:
    """The job's counts and top labels; the rate is of the images finished in these `seconds`."""
    from imgbatch.cli.results_out import print_table, result_dicts
    from imgbatch.db.jobs import find_job, job_counts
    from imgbatch.db.stats import label_histogram

    with session() as s:
        counts = job_counts(s, job_id)
        if show_rows and counts.total <= PRINT_ROWS_UP_TO:
            roots = find_job(s, job_id).roots
            print_table(result_dicts(s, job_id), str(roots[0]) if len(roots) == 1 else None)
        labels = label_histogram(s, job_id, limit=5)
    classified = max(0, counts.finished - since_finished)
    rate = classified / seconds if seconds > 0 else 0.0
    resumed = f" ({classified} in this run)" if since_finished else ""
    console.print(
        f"job {job_id}: {counted(counts.total, 'image')}, {counts.ok} ok, "
        f"{counted(counts.error, 'error')}{resumed}, "
        f"{seconds:.1f} s, {rate:.1f} images/s",
        markup=False,
        highlight=False,
    )
    if labels:
        console.print(Text("top labels: " + ", ".join(f"{shown(c.label)} ({c.count})" for c in labels)))
