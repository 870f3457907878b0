"""`imgbatch results --format parquet`: a job's rows as one Parquet file with typed columns.

The rows come from keyset pages of the database (db.results.result_pages, plain columns, no ORM
objects); each page becomes an Arrow record batch, and every ROW_GROUP_SIZE rows of them are written
as one row group by pyarrow's ParquetWriter: memory holds one page of Python rows and at most one
row group of Arrow columns, however many rows the job has. docs/cli.md documents the schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from imgbatch.db.models import ImageStatus
from imgbatch.db.results import EXPORT_COLUMNS, ResultFilter, result_pages

# Rows per database page: the Python objects held at once (a few KB a row with its parsed top-5).
PAGE_ROWS = 5_000
# Rows per row group: large enough for Parquet's columnar encodings and readers' per-group overhead
# (DuckDB's own groups are 122,880 rows); held as Arrow columns, a few hundred bytes a row.
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

# The names of a page's columns: db.results.result_pages yields (image id, path, image state, *columns).
_PAGE_COLUMNS = ("image_id", "path", "state", *(column.key for column in EXPORT_COLUMNS))


def parquet_pages(
    session: Session, job_id: str, filters: ResultFilter, limit: int | None, page_rows: int
) -> Iterator[Sequence[Any]]:
    """The rows to export, one database page at a time, at most `limit` in all."""
    left = limit
    for page in result_pages(session, job_id, filters, page_rows, EXPORT_COLUMNS):
        if left is not None:
            page = page[:left]
            left -= len(page)
        if page:
            yield page
        if left == 0:
            return


def page_batch(page: Sequence[Any]) -> pa.RecordBatch:
    """One page of (image id, path, state, *EXPORT_COLUMNS) rows as an Arrow batch of SCHEMA."""
    # Transposed once (in C) rather than read attribute by attribute: a million rows are a page
    # of tuples each, so per-value Python work is what export time is made of.
    columns: dict[str, Any] = dict(zip(_PAGE_COLUMNS, zip(*page, strict=True), strict=True))
    del columns["image_id"], columns["state"]
    # An image without a result row is pending, as in the CSV and JSON output.
    columns["status"] = [ImageStatus.PENDING.value if s is None else s.value for s in columns["status"]]
    columns["top5"] = _top5_array(columns["top5"])
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def _top5_array(top5s: Sequence[list[Any] | None]) -> pa.Array:
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


def write_parquet(pages: Iterator[Sequence[Any]], out: IO[bytes], row_group_size: int) -> int:
    """Every page into `out` (zstd-compressed), in row groups of `row_group_size` rows (the last
    one smaller); the number of rows written."""
    rows = 0
    batches: list[pa.RecordBatch] = []
    with pq.ParquetWriter(out, SCHEMA, compression="zstd") as writer:
        for page in pages:
            batches.append(page_batch(page))
            rows += len(page)
            if sum(b.num_rows for b in batches) >= row_group_size:
                batches = _write_groups(writer, batches, row_group_size, final=False)
        _write_groups(writer, batches, row_group_size, final=True)
    return rows


def _write_groups(
    writer: pq.ParquetWriter, batches: list[pa.RecordBatch], size: int, final: bool
) -> list[pa.RecordBatch]:
    """Whole row groups of `batches` written (and, when `final`, the rest too); the rest returned."""
    table = pa.Table.from_batches(batches, SCHEMA)
    whole = table.num_rows if final else table.num_rows - table.num_rows % size
    if whole:
        writer.write_table(table.slice(0, whole), row_group_size=size)
    return table.slice(whole).to_batches()
