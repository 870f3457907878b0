"""Render a job's results as a table, CSV or JSON, streaming rows so big jobs use constant memory."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from imgbatch.cli.console import console
from imgbatch.core.names import shown
from imgbatch.db.models import ImageStatus
from imgbatch.db.results import ResultFilter, iter_results

FIELDS = [
    "path",
    "status",
    "label",
    "class_index",
    "score",
    "error",
    "queue_ms",
    "decode_ms",
    "infer_ms",
    "persist_ms",
    "worker",
    "runtime",
    "top5",
]


def result_dicts(
    session: Session, job_id: str, filters: ResultFilter | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    for n, row in enumerate(iter_results(session, job_id, filters)):
        if limit is not None and n >= limit:
            return
        result = row.Result
        if result is None:
            yield {"path": row.path, "status": ImageStatus.PENDING, **{f: None for f in FIELDS[2:]}}
            continue
        yield {
            "path": row.path,
            "status": result.status,
            "label": result.label,
            "class_index": result.class_index,
            "score": None if result.score is None else round(result.score, 5),
            "error": result.error,
            "queue_ms": round(result.queue_ms, 3),
            "decode_ms": round(result.decode_ms, 3),
            "infer_ms": round(result.infer_ms, 3),
            "persist_ms": round(result.persist_ms, 3),
            "worker": result.worker,
            "runtime": result.runtime,
            "top5": result.top5,
        }


_TEXT_FIELDS = ("path", "label", "error", "worker", "runtime")


def write_csv(rows: Iterable[dict[str, Any]], out: IO[str] = sys.stdout, raw: bool = False) -> None:
    """CSV rows; control characters in text fields escaped as the table shows them (``\\x1b``,
    ``\\t``, ``\\n``) unless `raw`, so a file name can neither split a row nor reach a terminal."""
    writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        line = {**row, "top5": json.dumps(row["top5"]) if row["top5"] is not None else ""}
        if not raw:
            line.update({f: shown(row[f]) for f in _TEXT_FIELDS if row.get(f) is not None})
        writer.writerow(line)


def write_jsonl(rows: Iterable[dict[str, Any]], out: IO[str] = sys.stdout) -> None:
    for row in rows:
        out.write(json.dumps(row) + "\n")


def write_json(rows: Iterable[dict[str, Any]], out: IO[str] = sys.stdout) -> None:
    # A JSON array written element by element: valid JSON without holding the job in memory.
    out.write("[")
    for i, row in enumerate(rows):
        out.write(("," if i else "") + "\n  " + json.dumps(row))
    out.write("\n]\n")


def print_table(rows: Iterable[dict[str, Any]], root: str | None = None) -> None:
    """A table of results; paths relative to `root` when the job has a single directory.

    File names, labels and errors go in as plain Text with control characters escaped: a name like
    `x[/b].jpg` is shown, never read as markup, and an ESC in a name never reaches the terminal.
    """
    table = Table(show_lines=False, title=Text(shown(root)) if root else None)
    table.add_column("path", no_wrap=True)
    for name in ("status", "label", "score", "error", "decode ms", "infer ms", "runtime"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(
            Text(shown(os.path.relpath(row["path"], root) if root else row["path"])),
            str(row["status"]),
            Text(shown(row["label"] or "")),
            "" if row["score"] is None else f"{row['score']:.3f}",
            Text(shown(row["error"] or "")),
            "" if row["decode_ms"] is None else f"{row['decode_ms']:.1f}",
            "" if row["infer_ms"] is None else f"{row['infer_ms']:.1f}",
            row["runtime"] or "",
        )
    console.print(table)
