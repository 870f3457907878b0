"""`imgbatch report`: one HTML file of a job. matplotlib and Jinja2 load inside the command only."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from imgbatch.cli.console import session
from imgbatch.cli.params import JobArg


def report(
    job: JobArg = "latest",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="HTML file to write, `-` for stdout (default: report-<job id>.html here). An existing "
            "path that is not a regular file is refused.",
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare", metavar="JOB", help="Another job: also show the images whose label changed."
        ),
    ] = None,
    per_label: Annotated[
        int, typer.Option(metavar="N", min=0, max=200, help="Thumbnails per label group.")
    ] = 12,
) -> None:
    """Write a job's HTML report.

    One self-contained file: gallery by label, least confident images, errors by reason, latency
    histograms and images/s per worker.

    Example: imgbatch report latest -o report.html --compare 3f2a
    """
    from imgbatch.db.jobs import find_job
    from imgbatch.report.build import ReportOptions, build_report, check_writable, write_report

    if output is not None:
        check_writable(output)
    start = time.monotonic()
    with session() as s:
        job_id = find_job(s, job).id
        other = find_job(s, compare).id if compare is not None else None
        target = output or Path(f"report-{job_id[:8]}.html")
        check_writable(target)
        html = build_report(s, job_id, other, ReportOptions(per_label=per_label))
    write_report(html, target)
    size_kb = len(html.encode()) / 1024
    where = "stdout" if target == Path("-") else str(target)
    print(
        f"report of job {job_id} written to {where} ({size_kb:,.0f} KiB, {time.monotonic() - start:.1f} s)",
        file=sys.stderr,
    )
