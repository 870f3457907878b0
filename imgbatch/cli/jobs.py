"""Commands that read jobs: status, jobs, results, stats, compare. They only read the database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from imgbatch.cli.console import console, progress_bar, session
from imgbatch.cli.params import JobArg, JsonFlag
from imgbatch.core.errors import UserError
from imgbatch.core.names import counted, shown

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import IO

    from sqlalchemy.orm import Session

    from imgbatch.db.jobs import JobSummary
    from imgbatch.db.models import Job
    from imgbatch.db.results import ResultFilter


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


class StatusFilter(StrEnum):
    ok = "ok"
    error = "error"
    pending = "pending"


def status(
    job: JobArg = "latest",
    watch: Annotated[
        bool, typer.Option("--watch", metavar="", help="Follow with a live progress bar.")
    ] = False,
) -> None:
    """Show a job's state and counts.

    Example: imgbatch status latest --watch
    """
    from imgbatch.db.jobs import find_job, job_summary

    with session() as s:
        job_id = find_job(s, job).id
        if watch:
            _watch(s, job_id)
        summary = job_summary(s, job_id)
    console.print(
        f"job {summary.job_id}  state={summary.state}  total={summary.total}  ok={summary.ok}  "
        f"error={summary.error}  pending={summary.pending}  model={summary.model_sha256[:12]}",
        markup=False,
        highlight=False,
    )


def _watch(s: Session, job_id: str, poll_s: float = 0.5) -> None:
    from imgbatch.db.jobs import job_counts

    with progress_bar() as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=None)
        while True:
            counts = job_counts(s, job_id)
            s.rollback()  # end the read transaction so the next poll sees new rows
            bar.update(task, completed=counts.finished, total=counts.total)
            if counts.pending == 0:
                return
            time.sleep(poll_s)


def jobs(
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", min=1, help="How many recent jobs.")
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List recent jobs, newest first.

    With state, counts, images/s, model and directories.

    Example: imgbatch jobs -n 5
    """
    from imgbatch.db.jobs import list_jobs

    with session() as s:
        summaries = list_jobs(s, limit)
    if as_json:
        for summary in summaries:
            print(json.dumps(_job_json(summary)))
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
    for m in summaries:
        rate = m.images_per_second
        table.add_row(
            m.job_id[:12],
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            m.state,
            *(str(n) for n in (m.total, m.ok, m.error, m.pending)),
            "" if rate is None else f"{rate:.1f}",
            m.model_sha256[:12],
            Text(shown(", ".join(m.roots))),
        )
    console.print(table)


def _job_json(m: JobSummary) -> dict[str, object]:
    return {
        "id": m.job_id,
        "created_at": m.created_at.isoformat(),
        "state": m.state,
        "total": m.total,
        "ok": m.ok,
        "error": m.error,
        "pending": m.pending,
        "images_per_second": m.images_per_second,
        "model_sha256": m.model_sha256,
        "roots": m.roots,
    }


def results(
    job: JobArg = "latest",
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="table, csv, json, jsonl or parquet (needs -o). Default: from -o's suffix, else table.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write to this file or object-store URL (s3://bucket/key) instead of stdout. An "
            "existing path that is not a regular file is refused.",
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option(metavar="LABEL", help="Only images with this top-1 label.")
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(metavar="SCORE", help="Only images whose top-1 score is at least this.")
    ] = None,
    status_filter: Annotated[
        StatusFilter | None,
        typer.Option("--status", metavar="STATUS", help="Only ok, error or pending images."),
    ] = None,
    path_glob: Annotated[
        str | None,
        typer.Option(
            metavar="GLOB", help="Only paths matching this glob (whole path; `*` crosses directories)."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", metavar="N", min=1, help="At most N rows.")
    ] = None,
    row_group_size: Annotated[
        int | None, typer.Option(min=1, hidden=True, help="Parquet rows per row group.")
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="CSV: write control characters in names, labels and errors as is (unescaped)."
        ),
    ] = False,
) -> None:
    """Print every image of a job with its result.

    Label, score, error and stage timings, in image order, streamed (constant memory). Parquet
    (typed columns, top-5 as a list column; schema in docs/cli.md) goes to a file: -o FILE.

    \b
    Example: imgbatch results latest --label "tiger cat" --format csv
    Example: imgbatch results latest -o s3://bucket/results/latest.parquet
    """
    from imgbatch.core.outputs import STDOUT, check_writable
    from imgbatch.db.jobs import find_job
    from imgbatch.db.models import ImageStatus
    from imgbatch.db.results import ResultFilter

    target = output if output is not None and output != STDOUT else None
    if fmt is None:
        fmt = _format_of(target)
    if fmt == Format.parquet and target is None:
        raise UserError("parquet is binary, not for stdout: give a file, -o FILE or -o s3://BUCKET/KEY")
    if fmt == Format.table and target is not None:
        raise UserError("the table is for the terminal: use --format csv, json, jsonl or parquet with -o")
    if target is not None:
        check_writable(target, "results")
    wanted = ImageStatus(status_filter.value) if status_filter else None
    filters = ResultFilter(label, min_score, wanted, path_glob)
    with session() as s:
        found = find_job(s, job)
        if label is not None:
            check_label(s, found, label)
        if fmt == Format.parquet:
            _results_parquet(s, found.id, filters, limit, str(target), row_group_size)
        else:
            _results_text(s, found.id, filters, limit, fmt, target, raw)


def _format_of(target: str | None) -> Format:
    """The format a file name asks for (`out.parquet`, `rows.csv`), else the table."""
    suffix = (target or "").rsplit("/", 1)[-1].rpartition(".")[2].lower()
    return Format(suffix) if suffix in set(Format) - {Format.table} else Format.table


def _results_text(
    s: Session,
    job_id: str,
    filters: ResultFilter,
    limit: int | None,
    fmt: Format,
    target: str | None,
    raw: bool = False,
) -> None:
    from functools import partial

    from imgbatch.cli.results_out import print_table, result_dicts, write_csv, write_json, write_jsonl
    from imgbatch.core.outputs import STDOUT, open_text_output

    rows = result_dicts(s, job_id, filters, limit)
    if fmt == Format.table:
        print_table(rows)
        return
    writers: dict[Format, Callable[[Iterable[dict[str, Any]], IO[str]], None]] = {
        Format.csv: partial(write_csv, raw=raw),
        Format.json: write_json,
        Format.jsonl: write_jsonl,
    }
    start, counted = time.monotonic(), _Counted(rows)
    with open_text_output(target or STDOUT, "results") as out:
        writers[fmt](counted, out)
    if target is not None:
        _written(counted.n, job_id, target, start)


def _results_parquet(
    s: Session, job_id: str, filters: ResultFilter, limit: int | None, target: str, rows_per_group: int | None
) -> None:
    from imgbatch.cli.results_parquet import PAGE_ROWS, ROW_GROUP_SIZE, parquet_pages, write_parquet
    from imgbatch.core.outputs import open_output

    start = time.monotonic()
    group_rows = rows_per_group or ROW_GROUP_SIZE
    pages = parquet_pages(s, job_id, filters, limit, min(PAGE_ROWS, group_rows))
    with open_output(target, "results") as out:
        rows = write_parquet(pages, out, group_rows)
    _written(rows, job_id, target, start)


def _written(rows: int, job_id: str, target: str, start: float) -> None:
    import sys

    from imgbatch.core.outputs import shown_target

    elapsed = time.monotonic() - start
    print(
        f"{rows:,} rows of job {job_id} written to {shown_target(target)} ({elapsed:.1f} s)", file=sys.stderr
    )


class _Counted:
    """The rows passed through, counted on the way (the writers stream; nobody holds them)."""

    def __init__(self, rows: Iterator[dict[str, Any]]) -> None:
        self.rows, self.n = rows, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            self.n += 1
            yield row


def check_label(s: Session, job: Job, label: str) -> None:
    """UserError naming close matches when `label` is none of the job's model's classes."""
    import difflib

    known = _model_labels(s, job)
    if not known or label in known:
        return
    folded = {k.casefold(): k for k in known}
    close = [folded[label.casefold()]] if label.casefold() in folded else []
    close += [m for m in difflib.get_close_matches(label, known, n=3, cutoff=0.6) if m not in close]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(f"the model of job {job.id[:12]} has no label {label!r}{hint}")


def _model_labels(s: Session, job: Job) -> list[str]:
    """The job model's class names from its file, or else every label the job's results carry."""
    from pathlib import Path

    from imgbatch.core.errors import ModelFileError
    from imgbatch.core.modelfile import read_model_info
    from imgbatch.db.stats import label_histogram

    try:
        return read_model_info(Path(job.model_path)).labels
    except ModelFileError:
        return [count.label for count in label_histogram(s, job.id)]


def stats(job: JobArg = "latest", as_json: JsonFlag = False) -> None:
    """Show where a job's time went.

    Per-stage latency p50/p95/p99, images/s over time, images per worker, errors by reason, labels.

    Example: imgbatch stats latest --json
    """
    from imgbatch.cli.stats_out import job_stats, print_stats
    from imgbatch.db.jobs import find_job

    with session() as s:
        data = job_stats(s, find_job(s, job).id)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print_stats(console, data)


def compare(
    job_a: Annotated[str, typer.Argument(metavar="JOB_A", help="First job (e.g. the FP32 run).")],
    job_b: Annotated[
        str, typer.Argument(metavar="JOB_B", help="Second job (e.g. the INT8 run of the same images).")
    ],
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", min=0, help="Changed images to list.")
    ] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Compare the labels of two jobs.

    Top-1 agreement over the images they share (matched by path), and what changed.

    Example: imgbatch compare 3f2a 9c41 -n 20
    """
    from imgbatch.db.compare import changed_label_count, changed_labels, common_image_count
    from imgbatch.db.jobs import find_job

    with session() as s:
        a, b = find_job(s, job_a).id, find_job(s, job_b).id
        common, changed = common_image_count(s, a, b), changed_label_count(s, a, b)
        listed = changed_labels(s, a, b, limit=limit)
    if common == 0:
        raise UserError(f"jobs {a[:12]} and {b[:12]} share no image with a result (matched by path)")
    agreement = (common - changed) / common
    if as_json:
        changes = [
            {
                "path": c.path,
                "a": {"status": c.status_a, "label": c.label_a, "score": c.score_a},
                "b": {"status": c.status_b, "label": c.label_b, "score": c.score_b},
            }
            for c in listed
        ]
        summary = {"job_a": a, "job_b": b, "common": common, "changed": changed, "agreement": agreement}
        print(json.dumps({**summary, "changes": changes}, indent=2))
        return
    console.print(
        f"{counted(common, 'image')} in both jobs; top-1 agreement {agreement:.2%} ({changed} changed)"
    )
    if listed:
        table = Table(title=f"changed ({len(listed)} of {changed} shown)")
        for name in ("path", f"{a[:8]} label", "score", f"{b[:8]} label", "score"):
            table.add_column(name)
        for c in listed:
            table.add_row(
                Text(shown(c.path)),
                Text(shown(c.label_a or c.status_a)),
                _score(c.score_a),
                Text(shown(c.label_b or c.status_b)),
                _score(c.score_b),
            )
        console.print(table)


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
