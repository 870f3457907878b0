"""`imgbatch results --format parquet`: the same rows as JSON, typed, streamed in row groups, read
back with pyarrow and DuckDB; written to a local file or to a real S3 server (moto_server on
127.0.0.1, started here); refused on stdout and on paths that are not regular files.

Rows are written through the same write functions the workers use, on SQLite and PostgreSQL; one
test exports a real job classified by real workers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_line_error, imgbatch_env, run_cli
from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.images import iter_image_batches
from imgbatch.db.writes import add_images, create_job, mark_scanned, save_results

LABELS = ["tabby", "espresso", "missile", "moped", "daisy", "ice cream"]
# File names that are not plain: a byte that is not UTF-8, a backslash, quotes and a comma.
RAW_NAMES: list[str | bytes] = [b"/photos/caf\xe9.jpg", "/photos/back\\slash.jpg", '/photos/ü, "q".jpg']
# As imgbatch.core.names stores them: a backslash doubled, a byte that is not UTF-8 as \xNN.
ODD_NAMES = ["/photos/caf\\xe9.jpg", "/photos/back\\\\slash.jpg", '/photos/ü, "q".jpg']


def _result(job_id: str, image_id: int, i: int) -> dict[str, Any]:
    """Image i: every 10th fails, the others get a label and a top-5; runtime unset on every 7th
    (rows written before results.runtime existed)."""
    failed = i % 10 == 9
    label = LABELS[i % len(LABELS)]
    top5 = [
        [(i + k) % len(LABELS), LABELS[(i + k) % len(LABELS)], round(0.9 / (k + 1) - i * 1e-6, 6)]
        for k in range(5)
    ]
    return {
        "job_id": job_id,
        "image_id": image_id,
        "status": "error" if failed else "ok",
        "label": None if failed else label,
        "class_index": None if failed else i % len(LABELS),
        "score": None if failed else top5[0][2],
        "top5": None if failed else top5,
        "error": "not a decodable image: cannot identify image file" if failed else None,
        "queue_ms": 1.0 + i % 7 + 0.1234567,
        "decode_ms": 2.0 + i / 1000,
        "infer_ms": 3.25,
        "persist_ms": 0.5,
        "batch_size": 8,
        "worker": f"host-{i % 2}:{100 + i % 3}",
        "model_sha256": "a" * 64,
        "runtime": None if i % 7 == 0 else ("openvino" if i % 2 else "onnxruntime"),
    }


def _fill(db_url: str, job_id: str, n: int, pending: int) -> None:
    """n images (a few with odd names), the last `pending` of them without a result."""
    engine = make_engine(db_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    paths: list[str | bytes] = [
        *RAW_NAMES,
        *(f"/photos/{'sub/' if i % 3 == 0 else ''}img_{i:06d}.jpg" for i in range(n)),
    ]
    paths = paths[:n]
    with sessions.begin() as s:
        create_job(s, job_id, ["/photos"], "/m.onnx", "a" * 64, 64)
        add_images(s, job_id, paths)
        mark_scanned(s, job_id)
    with sessions.begin() as s:
        i = 0
        for batch in iter_image_batches(s, job_id, 1000):
            rows = []
            for image_id, _ in batch:
                if i < n - pending:
                    rows.append(_result(job_id, image_id, i))
                i += 1
            save_results(s, rows)
    engine.dispose()


def _json_rows(env: dict[str, str], job: str, *args: str) -> list[dict[str, Any]]:
    proc = run_cli(["results", job, "--format", "json", *args], env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _export(
    env: dict[str, str], job: str, target: str | Path, *args: str
) -> subprocess.CompletedProcess[str]:
    proc = run_cli(["results", job, "--format", "parquet", "-o", str(target), *args], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the file is the output; stderr says where it went
    return proc


def _close(a: float | None, b: float | None, places: int) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and round(a, places) == b)


def _assert_same_rows(parquet_rows: list[dict[str, Any]], json_rows: list[dict[str, Any]]) -> None:
    """Parquet holds the database's floats; JSON rounds scores to 5 places and times to 3."""
    assert len(parquet_rows) == len(json_rows)
    for p, j in zip(parquet_rows, json_rows, strict=True):
        for key in ("path", "status", "label", "class_index", "error", "worker"):
            assert p[key] == j[key], (key, p, j)
        assert _close(p["score"], j["score"], 5), (p, j)
        for stage in ("queue_ms", "decode_ms", "infer_ms", "persist_ms"):
            assert _close(p[stage], j[stage], 3), (stage, p, j)
        expected_top5 = (
            None
            if j["top5"] is None
            else [{"class_index": c, "label": lbl, "score": sc} for c, lbl, sc in j["top5"]]
        )
        assert p["top5"] == expected_top5, (p, j)


EXPECTED_TYPES = {
    "path": pa.string(),
    "status": pa.string(),
    "label": pa.string(),
    "class_index": pa.int32(),
    "score": pa.float64(),
    "error": pa.string(),
    "queue_ms": pa.float64(),
    "decode_ms": pa.float64(),
    "infer_ms": pa.float64(),
    "persist_ms": pa.float64(),
    "batch_size": pa.int32(),
    "worker": pa.string(),
    "runtime": pa.string(),
    "model_sha256": pa.string(),
    "created_at": pa.timestamp("us", tz="UTC"),
    "top5": pa.list_(
        pa.field(
            "item",
            pa.struct(
                [
                    pa.field("class_index", pa.int32(), nullable=False),
                    pa.field("label", pa.string(), nullable=False),
                    pa.field("score", pa.float64(), nullable=False),
                ]
            ),
            nullable=False,
        )
    ),
}


def test_parquet_has_the_json_rows_typed_in_row_groups(tmp_path: Path, db_url: str) -> None:
    n, pending = 530, 20
    started = time.time()
    _fill(db_url, "job_pq", n, pending)
    # A zone 5:30 off UTC: SQLite's naive UTC times must not be read as local ones.
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url, TZ="Asia/Kolkata")
    out = tmp_path / "results.parquet"
    proc = _export(env, "job_pq", out, "--row-group-size", "100")
    assert f"{n} rows of job job_pq written to {out}" in proc.stderr

    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_rows == n
    # One row group per database page of 100 rows: the export streamed.
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [
        100,
        100,
        100,
        100,
        100,
        30,
    ]
    table = parquet.read()
    assert {f.name: f.type for f in table.schema} == EXPECTED_TYPES
    rows = table.to_pylist()
    json_rows = _json_rows(env, "job_pq")
    _assert_same_rows(rows, json_rows)

    # What JSON does not show: runtime (null for old rows), batch size, model hash, when written.
    assert [r["path"] for r in rows[:3]] == ODD_NAMES
    finished = [r for r in rows if r["status"] != "pending"]
    assert len(finished) == n - pending and [r["status"] for r in rows[-pending:]] == ["pending"] * pending
    assert all(r[k] is None for r in rows[-pending:] for k in EXPECTED_TYPES if k not in ("path", "status"))
    assert [r["runtime"] for r in finished[:3]] == [None, "openvino", "onnxruntime"]
    assert all(r["batch_size"] == 8 and r["model_sha256"] == "a" * 64 for r in finished)
    assert rows[1]["queue_ms"] == 2.1234567  # unrounded
    for r in finished:
        assert started - 1 < r["created_at"].timestamp() <= time.time(), r["created_at"]

    # DuckDB reads the same file: count, types, an aggregate, the list column.
    db = duckdb.connect()
    types = dict(
        db.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{out}')").fetchall()
    )
    assert types["class_index"] == "INTEGER" and types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["top5"] == 'STRUCT(class_index INTEGER, "label" VARCHAR, score DOUBLE)[]'
    assert db.execute(f"SELECT count(*) FROM '{out}'").fetchone() == (n,)
    by_label = dict(
        db.execute(f"SELECT label, count(*) FROM '{out}' WHERE status = 'ok' GROUP BY label").fetchall()
    )
    expected: dict[str, int] = {}
    for j in json_rows:
        if j["status"] == "ok":
            expected[j["label"]] = expected.get(j["label"], 0) + 1
    assert by_label == expected
    second = db.execute(
        f"SELECT top5[2].label, len(top5) FROM '{out}' WHERE path = ?", [ODD_NAMES[1]]
    ).fetchone()
    assert second == (json_rows[1]["top5"][1][1], 5)
    errors = db.execute(f"SELECT count(*) FROM '{out}' WHERE status = 'error' AND top5 IS NULL").fetchone()
    assert errors == (sum(j["status"] == "error" for j in json_rows),)


def test_parquet_filters_limit_and_suffix(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'imgbatch.db'}"
    _fill(db_url, "job_f", 300, 10)
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)
    for args in (["--label", "espresso"], ["--status", "error"], ["--status", "pending"], ["--limit", "7"]):
        out = tmp_path / "filtered.parquet"
        _export(env, "job_f", out, "--row-group-size", "16", *args)
        _assert_same_rows(pq.read_table(out).to_pylist(), _json_rows(env, "job_f", *args))
    # Without --format, the suffix of -o says parquet; a job with no matching row is a valid empty file.
    inferred = tmp_path / "inferred.parquet"
    proc = run_cli(["results", "job_f", "-o", str(inferred), "--label", "daisy", "--min-score", "0.99"], env)
    assert proc.returncode == 0, proc.stderr
    empty = pq.read_table(inferred)
    assert empty.num_rows == 0 and {f.name: f.type for f in empty.schema} == EXPECTED_TYPES
    # A file:// URL is a local path.
    as_url = tmp_path / "as-url.parquet"
    _export(env, "job_f", f"file://{as_url}")
    _assert_same_rows(pq.read_table(as_url).to_pylist(), _json_rows(env, "job_f"))
    # Text formats go to files too, with the same rows as stdout.
    as_csv = tmp_path / "rows.csv"
    assert run_cli(["results", "job_f", "-o", str(as_csv)], env).returncode == 0
    assert as_csv.read_text() == run_cli(["results", "job_f", "--format", "csv"], env).stdout


def test_parquet_refusals(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'imgbatch.db'}"
    _fill(db_url, "job_r", 20, 0)
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)
    base = ["results", "job_r", "--format", "parquet"]
    assert_one_line_error(run_cli(base, env), "parquet is binary, not for stdout", "-o FILE")
    assert_one_line_error(run_cli([*base, "-o", "-"], env), "parquet is binary")
    directory = tmp_path / "a_directory"
    directory.mkdir()
    assert_one_line_error(run_cli([*base, "-o", str(directory)], env), "refusing to write", "a directory")
    fifo = tmp_path / "a_fifo"
    os.mkfifo(fifo)
    # Refused from lstat before anything opens it (opening a FIFO for writing would block).
    assert_one_line_error(run_cli([*base, "-o", str(fifo)], env, timeout=60), "not a regular file")
    assert_one_line_error(
        run_cli([*base, "-o", str(tmp_path / "missing" / "x.parquet")], env), "no such directory"
    )
    assert_one_line_error(run_cli([*base, "-o", "nosuchstore://bucket/x.parquet"], env), "cannot write")
    # Credentials belong in the store's usual places; one written in the URL is never echoed.
    for url in ("s3://AKIAEXAMPLE:hunter2secret@bucket/x.parquet", "s3://bucket/x.parquet?sig=hunter2secret"):
        refused = run_cli([*base, "-o", url], env)
        assert_one_line_error(refused, "are not accepted")
        assert "hunter2secret" not in refused.stderr + refused.stdout
    assert_one_line_error(run_cli(["results", "job_r", "-o", str(tmp_path / "x.txt")], env), "table")
    # Nothing was left behind by the refusals (no temporary file beside any target).
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_real_job_exported(tmp_path: Path, photo_dir: Path, model_path: Path) -> None:
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    run = run_cli(["run", str(photo_dir), "--workers", "1"], env, timeout=600)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "real.parquet"
    _export(env, "latest", out)
    table = pq.read_table(out)
    json_rows = _json_rows(env, "latest")
    assert table.num_rows == len(json_rows) == len(list(photo_dir.iterdir()))
    rows = table.to_pylist()
    _assert_same_rows(rows, json_rows)
    assert all(r["status"] == "ok" and len(r["top5"]) == 5 for r in rows)
    assert all(math.isclose(r["score"], r["top5"][0]["score"]) for r in rows)
    # One runtime for the whole job (null while workers do not record it).
    assert len({r["runtime"] for r in rows}) == 1 and rows[0]["runtime"] in (None, "onnxruntime", "openvino")
    got = duckdb.connect().execute(f"SELECT count(DISTINCT path), min(batch_size) FROM '{out}'").fetchone()
    assert got is not None and got[0] == len(rows) and got[1] >= 1


# ---------------------------------------------------------------------------- a real S3 server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1 (as s3fs's own tests run it), stopped at the end."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert exe is not None, "moto_server is not installed (the dev extra's moto[server])"
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}


def test_parquet_to_s3(tmp_path: Path) -> None:
    import s3fs

    db_url = f"sqlite:///{tmp_path / 'imgbatch.db'}"
    _fill(db_url, "job_s3", 250, 5)
    with moto_server(tmp_path / "moto.log") as endpoint:
        # The store's standard settings, given to the command's environment only.
        env = imgbatch_env(
            tmp_path, IMGBATCH_DATABASE_URL=db_url, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
        )
        env.update(S3_CREDENTIALS)
        fs = s3fs.S3FileSystem(
            key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": endpoint},
        )
        fs.mkdir("results-bucket")
        proc = _export(env, "job_s3", "s3://results-bucket/exports/job_s3.parquet", "--row-group-size", "64")
        assert "written to s3://results-bucket/exports/job_s3.parquet" in proc.stderr
        assert S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in proc.stderr
        with fs.open("results-bucket/exports/job_s3.parquet", "rb") as handle:
            parquet = pq.ParquetFile(handle)
            assert parquet.num_row_groups == 4
            _assert_same_rows(parquet.read().to_pylist(), _json_rows(env, "job_s3"))

        base = ["results", "job_s3", "--format", "parquet", "-o"]
        # A bucket that does not exist: one line, and no object anywhere.
        missing = run_cli([*base, "s3://no-such-bucket/x.parquet"], env)
        assert_one_line_error(missing, "cannot write results to s3://no-such-bucket/x.parquet")
        # A prefix that holds objects is a directory of the store.
        assert_one_line_error(run_cli([*base, "s3://results-bucket/exports"], env), "it is a prefix")


def test_row_groups_span_database_pages(tmp_path: Path) -> None:
    """Pages of 5,000 rows from the database gather into row groups of the asked size."""
    db_url = f"sqlite:///{tmp_path / 'imgbatch.db'}"
    n = 12_345
    _fill(db_url, "job_big", n, 45)
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)
    json_rows = _json_rows(env, "job_big")
    for size, groups in ((7_000, [7_000, 5_345]), (None, [n]), (2_500, [2_500] * 4 + [2_345])):
        out = tmp_path / f"big-{size}.parquet"
        _export(env, "job_big", out, *(["--row-group-size", str(size)] if size else []))
        parquet = pq.ParquetFile(out)
        assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == groups
        _assert_same_rows(parquet.read().to_pylist(), json_rows)
