"""Benchmark: `imgbatch results JOB --label X` on a job with 1,000,000 stored results (PostgreSQL).

Creates a throwaway database, migrates it, generates the rows server-side, then times the very
query path the CLI uses (db.results.iter_results with a label filter, all matching rows fetched),
with the label index and, as the baseline in the same run, without it. Prints figures; asserts none.

    .venv/bin/python scripts/bench_label_query.py [--rows 1000000] [--labels 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import psycopg
from sqlalchemy import text

from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.results import ResultFilter, iter_results

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
INSERT_JOB = (
    "INSERT INTO jobs (id, created_at, state, roots, model_path, model_sha256, batch_size, "
    "total_images) VALUES ('bench', now(), 'done', '[\"/photos\"]', '/m.onnx', repeat('a', 64), "
    "16, :n)"
)
INSERT_IMAGES = (
    "INSERT INTO images (job_id, path, state) SELECT 'bench', '/photos/img_' || i || '.jpg', "
    "'ok' FROM generate_series(1, :n) AS i"
)
INSERT_RESULTS = (
    "INSERT INTO results (job_id, image_id, status, label, class_index, score, queue_ms, "
    "decode_ms, infer_ms, persist_ms, batch_size, worker, model_sha256, created_at) SELECT "
    "'bench', id, 'ok', 'label_' || (id % :labels), id % :labels, (id % 100) / 100.0, 1, 2, 3, "
    "0.5, 16, 'host:1', repeat('a', 64), now() FROM images"
)
EXPLAIN_FIRST_PAGE = (
    "EXPLAIN ANALYZE SELECT images.id, images.path, images.state, results.* FROM images JOIN "
    "results ON results.image_id = images.id WHERE results.job_id = 'bench' AND "
    "results.image_id > 0 AND results.label = 'label_7' ORDER BY results.image_id LIMIT 1000"
)


def timed(sessions, job_id: str, label: str, repeats: int = 7) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    times, n = [], 0
    for _ in range(repeats):
        with sessions() as session:
            start = time.perf_counter()
            n = sum(1 for _ in iter_results(session, job_id, ResultFilter(label=label)))
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=1000)
    args = parser.parse_args()
    name = f"imgbatch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    try:
        ensure_schema(engine)
        start = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(
                text(INSERT_JOB),
                {"n": args.rows},
            )
            conn.execute(
                text(INSERT_IMAGES),
                {"n": args.rows},
            )
            conn.execute(
                text(INSERT_RESULTS),
                {"labels": args.labels},
            )
            conn.execute(text("ANALYZE"))
        print(
            f"generated {args.rows} results over {args.labels} labels in {time.perf_counter() - start:.1f} s"
        )
        sessions = session_factory(engine)
        with engine.connect() as conn:
            plan = conn.execute(text(EXPLAIN_FIRST_PAGE)).all()
        print("query plan (first page):")
        for (line,) in plan:
            print("   ", line)
        with_index, n = timed(sessions, "bench", "label_7")
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_results_job_label"))
            conn.execute(text("ANALYZE results"))
        without_index, n2 = timed(sessions, "bench", "label_7", repeats=3)
        assert n == n2
        print(f"results --label label_7 ({n} of {args.rows} rows, all fetched through iter_results):")
        print(f"  with ix_results_job_label    median {with_index:8.1f} ms")
        print(f"  without it (baseline)        median {without_index:8.1f} ms")
        print(f"  speed-up                     {without_index / with_index:8.1f} x")
    finally:
        engine.dispose()
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
