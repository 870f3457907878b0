"""`imgbatch report`: the command. matplotlib and Jinja2 are imported inside it, never at import."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from imgbatch.settings import get_settings


def report_command(
    job: Annotated[str, typer.Argument(help="Job id, id prefix, or `latest`.")] = "latest",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file to write (default: report-<job id>.html here)."),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare", help="Another job (id, prefix, `latest`): show images whose label changed."
        ),
    ] = None,
    per_label: Annotated[int, typer.Option(min=0, max=200, help="Thumbnails per label group.")] = 12,
) -> None:
    """Write one self-contained HTML report of a job: gallery by label, least confident images,
    errors by reason, latency histograms and images/s per worker."""
    from db.engine import ensure_schema, make_engine, session_factory
    from db.queries import get_job
    from imgbatch.report.build import ReportOptions, build_report, check_writable, write_report

    if output is not None:
        check_writable(output)
    start = time.monotonic()
    engine = make_engine(get_settings().db_url)
    try:
        ensure_schema(engine)
        with session_factory(engine)() as session:
            job_id = get_job(session, job).id
            other = get_job(session, compare).id if compare is not None else None
            target = output or Path(f"report-{job_id[:8]}.html")
            check_writable(target)
            html = build_report(session, job_id, other, ReportOptions(per_label=per_label))
    finally:
        engine.dispose()
    write_report(html, target)
    size_kb = target.stat().st_size / 1024
    print(
        f"report of job {job_id} written to {target} ({size_kb:,.0f} KiB, {time.monotonic() - start:.1f} s)",
        file=sys.stderr,
    )
