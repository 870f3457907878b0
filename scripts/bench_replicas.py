"""Benchmark: images/s of one job with 1 and with 2 worker replicas, each replica given one core.

A replica here is an `imgbatch worker --concurrency 1` process pinned with taskset to its own CPU,
as a container limited to one CPU would be (its ORT threads follow: 1). Private redis-server and
SQLite in a temporary directory; the same images for both runs. Prints figures; asserts none.
(`imgbatch bench` reports the other reading: one unpinned process using every core vs two.)

    .venv/bin/python scripts/bench_replicas.py DIR [--images 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgbatch.core.cpus import usable_cpus
from imgbatch.db.engine import make_engine, session_factory
from imgbatch.db.jobs import find_job, job_summary
from imgbatch.producer.local_redis import local_redis
from imgbatch.producer.scan import IMAGE_EXTENSIONS


def run_job(env: dict[str, str], job_dir: Path, replicas: int, log_dir: Path) -> tuple[float, int]:
    workers = []
    for cpu in range(replicas):
        log = open(log_dir / f"worker-{replicas}-{cpu}.log", "wb")  # noqa: SIM115 - closed below
        workers.append(
            (
                subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        str(cpu),
                        sys.executable,
                        "-m",
                        "imgbatch",
                        "worker",
                        "--concurrency",
                        "1",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while not all(
            " ready." in (log_dir / f"worker-{replicas}-{c}.log").read_text() for c in range(replicas)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.2)
        done = subprocess.run(
            [sys.executable, "-m", "imgbatch", "submit", str(job_dir), "--wait", "--new"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = done.stdout.split()[-1]
    finally:
        for proc, log in workers:
            proc.terminate()
            proc.wait()
            log.close()
    engine = make_engine(env["IMGBATCH_DATABASE_URL"])
    with session_factory(engine)() as session:
        summary = job_summary(session, find_job(session, job_id).id)
    engine.dispose()
    # From the first result to the last: worker start-up and submission are left out of both runs.
    assert summary.first_result_at and summary.last_result_at
    seconds = (summary.last_result_at - summary.first_result_at).total_seconds()
    return summary.results / seconds, len(summary.workers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    if usable_cpus() < 2:
        sys.exit("needs 2 CPUs")
    files = sorted(p for p in args.directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[
        : args.images
    ]
    with tempfile.TemporaryDirectory(prefix="imgbatch-replicas-") as tmp, local_redis() as redis_url:
        job_dir = Path(tmp) / "images"
        job_dir.mkdir()
        for i, path in enumerate(files):
            # Hard links, not symlinks: workers refuse symlinks that lead outside the job's directory.
            target = job_dir / f"{i:06d}{path.suffix}"
            try:
                os.link(path.resolve(), target)
            except OSError:
                shutil.copy(path, target)
        env = {
            **os.environ,
            "IMGBATCH_REDIS_URL": redis_url,
            "IMGBATCH_DATA_DIR": tmp,
            "IMGBATCH_DATABASE_URL": f"sqlite:///{tmp}/imgbatch.db",
        }
        rates: dict[int, float] = {}
        # Alternated and repeated, best of each: the first job also warms caches and the CPU.
        for replicas in (1, 2, 1, 2):
            rate, seen = run_job(env, job_dir, replicas, Path(tmp))
            rates[replicas] = max(rate, rates.get(replicas, 0.0))
            print(
                f"{replicas} replica(s), one core each: {rate:7.1f} images/s ({seen} worker(s) wrote results)"
            )
        print(f"scaling 2 replicas / 1 replica: {rates[2] / rates[1]:.2f}x  ({len(files)} images)")


if __name__ == "__main__":
    main()
