"""A big submit, measured: N files (hard links to a small real JPEG), `imgbatch submit` against SQLite
with one worker running, and from outside:

- wall clock of the submit (scan + inserts, until it returns);
- the producer's peak RSS (its rusage, from wait4);
- time from the submit's start to the first result row (workers start while the scan goes on);
- the longest wait of a probe process that takes SQLite's write lock (BEGIN IMMEDIATE) on the same
  file every 20 ms for the whole submit: how long anyone else's write can be held up.

Usage: .venv/bin/python scripts/bench_submit.py [--files 1000000] [--per-dir 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgbatch.core.samples import load_photo  # noqa: E402
from imgbatch.producer.local_redis import local_redis  # noqa: E402

# ext4 allows 65,000 links to one inode: a copy of the JPEG for every 50,000 names.
LINKS_PER_COPY = 50_000


def make_files(root: Path, files: int, per_dir: int) -> float:
    start = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    load_photo("cat").resize((96, 96)).save(buffer, format="JPEG", quality=85)
    photos = root / "photos"
    for n in range(files):
        d, i = divmod(n, per_dir)
        if i == 0:
            directory = photos / f"d{d:05d}"
            directory.mkdir(parents=True)
        source = root / f"source-{n // LINKS_PER_COPY}.jpg"
        if n % LINKS_PER_COPY == 0:
            source.write_bytes(buffer.getvalue())
        os.link(source, directory / f"img{i:07d}.jpg")
    return time.monotonic() - start


def probe(db_path: str, stop: Any, out: Any) -> None:
    """Take the write lock over and over; report the longest wait for it (seconds) and how many."""
    longest, count = 0.0, 0
    while not stop.is_set():
        if not os.path.exists(db_path):
            time.sleep(0.05)
            continue
        conn = sqlite3.connect(db_path, timeout=120, isolation_level=None)
        try:
            start = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            waited = time.monotonic() - start
            conn.execute("ROLLBACK")
            longest, count = max(longest, waited), count + 1
        except sqlite3.OperationalError:
            pass
        finally:
            conn.close()
        time.sleep(0.02)
    out.put((longest, count))


def first_result_at(db_path: str) -> float | None:
    conn = sqlite3.connect(db_path, timeout=60)
    try:
        value = conn.execute("SELECT min(created_at) FROM results").fetchone()[0]
    finally:
        conn.close()
    if value is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=os.environ.get("IMGBATCH_MODEL"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="imgbatch-bench-submit-"))
    made_s = make_files(work, args.files, args.per_dir)
    print(f"made {args.files:,} files (hard links) in {made_s:.1f} s under {work}", flush=True)
    db_path = str(work / "bench.db")
    with local_redis() as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGBATCH_")}
        env.update(
            IMGBATCH_DATA_DIR=str(work / "data"),
            IMGBATCH_DATABASE_URL=f"sqlite:///{db_path}",
            IMGBATCH_REDIS_URL=redis_url,
        )
        if args.model:
            env["IMGBATCH_MODEL"] = str(args.model)
        log = open(work / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "imgbatch", "worker", "-c", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(8)  # the worker loads its model
        stop: Any = multiprocessing.Event()
        out: Any = multiprocessing.Queue()
        prober = multiprocessing.Process(target=probe, args=(db_path, stop, out))
        prober.start()
        started = time.time()
        submit = subprocess.Popen(
            [sys.executable, "-m", "imgbatch", "submit", str(work / "photos")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(submit.pid, 0)
        wall_s = time.time() - started
        stop.set()
        longest_s, probes = out.get(timeout=180)
        prober.join()
        first = first_result_at(db_path)
        conn = sqlite3.connect(db_path, timeout=60)
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        conn.close()
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    stderr = submit.stderr.read().decode() if submit.stderr else ""
    print(f"submit exit status {os.waitstatus_to_exitcode(status)}; {stderr.strip()}")
    print(f"files                       {args.files:,} ({args.per_dir} per directory)")
    print(f"images recorded             {images:,}")
    print(f"submit wall clock           {wall_s:.1f} s ({images / wall_s:,.0f} images/s)")
    print(f"producer peak RSS           {usage.ru_maxrss / 1024:.0f} MB")
    ttfr = f"{first - started:.2f} s" if first else "no result during the submit"
    print(f"time to first result        {ttfr} (results by the end of the submit: {results:,})")
    print(f"longest write-lock wait     {longest_s * 1000:.0f} ms ({probes:,} probes, BEGIN IMMEDIATE)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
