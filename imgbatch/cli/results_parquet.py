"""`imgbatch results --format parquet`: a job's rows as one Parquet file with typed columns.

The rows come from keyset pages of the database (db.reads.result_pages, plain columns, no ORM
objects) and each page becomes one Arrow table, written as one row group by pyarrow's ParquetWriter:
memory holds one page, however many rows the job has. docs/cli.md documents the schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from db.models import ImageStatus
from db.reads import EXPORT_COLUMNS, ResultFilter, result_pages

# Rows per row group (and per database page): large enough for Parquet's columnar encodings and
# readers' per-group overhead, small enough that one page of Python rows stays well under 100 MB.
ROW_GROUP_SIZE = 50_000

TOP5_ENTRY = pa.struct(
    [
        pa.field("class_index", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("class_index", pa.int32()),
        pa.field("score", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("queue_ms", pa.float64()),
        pa.field("decode_ms", pa.float64()),
        pa.field("infer_ms", pa.float64()),
        pa.field("persist_ms", pa.float64()),
        pa.field("batch_size", pa.int32()),
        pa.field("worker", pa.string()),
        pa.field("runtime", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("top5", pa.list_(pa.field("item", TOP5_ENTRY, nullable=False))),
    ],
    metadata={"imgbatch": "results of one job; path as stored (imgbatch.core.names encoding)"},
)

# Result columns copied as they are (the rest are derived below).
_PLAIN = (
    "label",
    "class_index",
    "score",
    "error",
    "queue_ms",
    "decode_ms",
    "infer_ms",
    "persist_ms",
    "batch_size",
    "worker",
    "runtime",
    "model_sha256",
    "created_at",
)


def parquet_pages(
    session: Session, job_id: str, filters: ResultFilter, limit: int | None, rows_per_group: int
) -> Iterator[Sequence[Any]]:
    """The rows to export, one database page (one future row group) at a time, at most `limit`."""
    left = limit
    for page in result_pages(session, job_id, filters, rows_per_group, EXPORT_COLUMNS):
        if left is not None:
            page = page[:left]
            left -= len(page)
        if page:
            yield page
        if left == 0:
            return


def page_table(page: Sequence[Any]) -> pa.Table:
    """One page of (image id, path, state, *EXPORT_COLUMNS) rows as an Arrow table of SCHEMA."""
    columns: dict[str, Any] = {
        "path": [row.path for row in page],
        # An image without a result row is pending, as in the CSV and JSON output.
        "status": [str(row.status or ImageStatus.PENDING) for row in page],
    }
    for name in _PLAIN:
        columns[name] = [getattr(row, name) for row in page]
    columns["top5"] = _top5_array([row.top5 for row in page])
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _top5_array(top5s: list[list[Any] | None]) -> pa.Array:
    """[[class_index, label, score], ...] per row (None for errors and pending images) as a list
    column of structs, built from flat child arrays rather than a dict per entry."""
    offsets = [0]
    indexes: list[int] = []
    labels: list[str] = []
    scores: list[float] = []
    for entries in top5s:
        for class_index, label, score in entries or ():
            indexes.append(class_index)
            labels.append(label)
            scores.append(score)
        offsets.append(len(indexes))
    values = pa.StructArray.from_arrays(
        [pa.array(indexes, pa.int32()), pa.array(labels, pa.string()), pa.array(scores, pa.float64())],
        fields=list(TOP5_ENTRY),
    )
    missing = pa.array([entries is None for entries in top5s], pa.bool_())
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), values, type=SCHEMA.field("top5").type, mask=missing
    )


def write_parquet(pages: Iterator[Sequence[Any]], out: IO[bytes]) -> int:
    """Every page as one row group of `out` (zstd-compressed); the number of rows written."""
    rows = 0
    with pq.ParquetWriter(out, SCHEMA, compression="zstd") as writer:
        for page in pages:
            table = page_table(page)
            writer.write_table(table, row_group_size=len(page))
            rows += table.num_rows
    return rows
