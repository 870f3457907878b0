"""Benchmark: `imgbatch results JOB --format parquet -o FILE` on a job of 1,000,000 results (SQLite).

Makes the job cheaply (bulk inserts of realistic rows straight into a fresh SQLite database in a
temporary directory: ImageNet labels from the model file when there is one, a top-5 per row, 1%
error rows, timings, four hosts' workers), then runs the command as a subprocess and prints its
wall clock, its peak RSS and the file's size; reads the file back with pyarrow and
DuckDB; and does the same for `--format csv` as the baseline, in the same run. Prints figures;
asserts nothing.

    .venv/bin/python scripts/bench_parquet.py [--rows 1000000] [--row-group-size N] [--keep DIR]

Needs GNU time at /usr/bin/time (Debian: apt-get install time) for the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imgbatch.db.engine import ensure_schema, make_engine

JOB = "bench-parquet"
SHA = "3f2a" * 16
CHUNK = 20_000


def labels() -> list[str]:
    """The default model's 1000 class names when it is at hand, else made-up ones as long."""
    from imgbatch.core.errors import ModelFileError
    from imgbatch.core.modelfile import read_model_info
    from imgbatch.core.settings import Settings

    for path in (os.environ.get("IMGBATCH_TEST_MODEL"), str(Settings().model_path)):
        if path and Path(path).is_file():
            try:
                return read_model_info(Path(path)).labels
            except ModelFileError:
                pass
    return [f"class_{i:04d} common name" for i in range(1000)]


def result_rows(n: int, names: list[str], rng: random.Random) -> Iterator[tuple[Any, ...]]:
    """(image_id, status, label, class_index, score, top5, error, 4 timings, batch_size, worker,
    created_at) of images 1..n."""
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    workers = [f"worker-{h}.example.internal:{pid}" for h in range(4) for pid in (101, 102, 103, 104)]
    for image_id in range(1, n + 1):
        when = (start + timedelta(seconds=image_id / 300)).strftime("%Y-%m-%d %H:%M:%S.%f")
        timings = (rng.uniform(5, 900), rng.uniform(4, 40), rng.uniform(6, 30), rng.uniform(0.05, 0.4))
        worker = workers[image_id % len(workers)]
        if rng.random() < 0.01:
            error = "not a decodable image: cannot identify image file"
            yield (image_id, "error", None, None, None, None, error, *timings, 8, worker, when)
            continue
        classes = rng.sample(range(len(names)), 5)
        raw = sorted((rng.random() ** 3 for _ in range(5)), reverse=True)
        total = sum(raw) + rng.uniform(0, 1)
        top5 = [[c, names[c], round(r / total, 6)] for c, r in zip(classes, raw, strict=True)]
        best = classes[0]
        yield (
            image_id,
            "ok",
            names[best],
            best,
            top5[0][2],
            json.dumps(top5),
            None,
            *timings,
            8,
            worker,
            when,
        )


def make_job(db_path: Path, n: int) -> float:
    """The job's rows in a migrated SQLite database; seconds it took."""
    start = time.perf_counter()
    engine = make_engine(f"sqlite:///{db_path}")
    ensure_schema(engine)
    engine.dispose()
    names, rng = labels(), random.Random(20)
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO jobs (id, created_at, state, roots, model_path, model_sha256, batch_size, "
            "total_images) VALUES (?, '2026-11-30 09:00:00.000000', 'done', '[\"/data/photos\"]', "
            "'/models/efficientnet_lite0.int8.onnx', ?, 32, ?)",
            (JOB, SHA, n),
        )
        conn.executemany(
            "INSERT INTO images (id, job_id, path, state) VALUES (?, ?, ?, ?)",
            (
                (i, JOB, f"/data/photos/{2020 + i % 6}/{1 + i % 12:02d}/IMG_{i:07d}.jpg", "ok")
                for i in range(1, n + 1)
            ),
        )
        conn.executemany(
            "INSERT INTO results (job_id, image_id, status, label, class_index, score, top5, error, "
            "queue_ms, decode_ms, infer_ms, persist_ms, batch_size, worker, model_sha256, runtime, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'onnxruntime', ?)",
            ((JOB, *row[:13], SHA, row[13]) for row in result_rows(n, names, rng)),
        )
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - start


def run_measured(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Wall clock (s), peak RSS (MB) and exit code of `imgbatch ARGS`.

    The RSS comes from GNU time's %M: wait4's figure for a child of this process would include the
    pages it inherited from this (large) one before exec.
    """
    usage = log.with_suffix(".time")
    start = time.perf_counter()
    with open(log, "wb") as out:
        code = subprocess.call(
            ["/usr/bin/time", "-f", "%M", "-o", str(usage), sys.executable, "-m", "imgbatch", *args],
            env=env,
            stdout=out,
            stderr=out,
        )
    wall = time.perf_counter() - start
    return wall, int(usage.read_text().split()[-1]) / 1024, code


def read_back(parquet: Path) -> None:
    import duckdb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start = time.perf_counter()
    meta = pq.ParquetFile(parquet).metadata
    table = pq.read_table(parquet, columns=["status", "label", "score"])
    ok = table.filter(pc.equal(table["status"], "ok"))
    counts = ok.group_by("label").aggregate([("label", "count")]).sort_by([("label_count", "descending")])
    top = counts.slice(0, 1).to_pylist()[0]
    print(
        f"  pyarrow: {meta.num_rows:,} rows in {meta.num_row_groups} row groups; "
        f"mean score {pc.mean(ok['score']).as_py():.4f}; most frequent label {top['label']!r} "
        f"({top['label_count']:,}) [{time.perf_counter() - start:.2f} s]"
    )
    start = time.perf_counter()
    db = duckdb.connect()
    (count,) = db.execute(f"SELECT count(*) FROM '{parquet}'").fetchone() or (0,)
    errors, p50_infer, top5_rank1 = db.execute(
        f"SELECT count(*) FILTER (WHERE status = 'error'), median(infer_ms), "
        f"avg(top5[1].score) FROM '{parquet}'"
    ).fetchone() or (0, 0.0, 0.0)
    print(
        f"  duckdb:  count(*) {count:,}; errors {errors:,}; median infer_ms {p50_infer:.2f}; "
        f"avg top5[1].score {top5_rank1:.4f} [{time.perf_counter() - start:.2f} s]"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-group-size", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="Work here and keep the files.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgbatch-bench-parquet-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "imgbatch.db"
        db.unlink(missing_ok=True)
        print(f"cpus: {os.cpu_count()} (machine shared with other work: figures are indicative)")
        made_s, db_mib = make_job(db, args.rows), db.stat().st_size / 2**20
        print(f"made a job of {args.rows:,} results in {made_s:.1f} s (SQLite {db_mib:,.0f} MiB)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGBATCH_")}
        env.update(IMGBATCH_DATABASE_URL=f"sqlite:///{db}", IMGBATCH_DATA_DIR=str(work / "data"))
        extra = ["--row-group-size", str(args.row_group_size)] if args.row_group_size else []
        for fmt in ("parquet", "csv"):
            out = work / f"results.{fmt}"
            wall, rss_mb, code = run_measured(
                ["results", JOB, "--format", fmt, "-o", str(out), *(extra if fmt == "parquet" else [])],
                env,
                work / f"{fmt}.log",
            )
            said = (work / f"{fmt}.log").read_text().strip()
            if code != 0:
                print(f"results --format {fmt} failed ({code}): {said}")
                continue
            print(
                f"results --format {fmt}: {wall:.1f} s wall, peak RSS {rss_mb:.0f} MB, "
                f"file {out.stat().st_size / 2**20:.1f} MiB  [{said}]"
            )
            if fmt == "parquet":
                read_back(out)


if __name__ == "__main__":
    main()
