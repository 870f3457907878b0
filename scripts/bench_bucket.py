"""Benchmark: images/s of one job read from a local S3 server against the same files on disk.

The same images, the same worker (one `imgbatch worker` with one pool process per usable core), a
private redis-server and SQLite; the S3 server is moto's standalone server on 127.0.0.1, on the same
machine, so it competes with the workers for the CPUs (the question is whether reading objects
becomes the bottleneck). Jobs alternate disk / bucket, twice; best of each. The rate is from the
first result to the last (worker start-up and submission left out). Prints figures; asserts none.

    IMGBATCH_MODEL=path/to/model.onnx .venv/bin/python scripts/bench_bucket.py [DIR] [--images 2000]

With DIR, all its images; without, it makes `--images` of them (crops, flips and rescales of the
sample photos, 512 px at most).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgbatch.core.samples import make_variants
from imgbatch.db.engine import make_engine, session_factory
from imgbatch.db.jobs import find_job, job_summary
from imgbatch.producer.local_redis import local_redis
from imgbatch.producer.scan import IMAGE_EXTENSIONS

BUCKET = "bench"
# Throwaway credentials of the local server; the workers find them the standard way (AWS_* variables).
STORE_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def upload(endpoint: str, root: Path, files: list[Path]) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=STORE_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=STORE_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=STORE_ENV["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=BUCKET)

    def put(path: Path) -> None:
        key = f"images/{path.relative_to(root).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))


def run_job(env: dict[str, str], source: str, log_path: Path) -> tuple[float, int, int]:
    """(images/s from first to last result, results, errors) of one job over `source`."""
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "imgbatch", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"worker did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        done = subprocess.run(
            [sys.executable, "-m", "imgbatch", "submit", source, "--wait", "--new"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = done.stdout.split()[-1]
    finally:
        worker.terminate()
        worker.wait()
    engine = make_engine(env["IMGBATCH_DATABASE_URL"])
    with session_factory(engine)() as session:
        summary = job_summary(session, find_job(session, job_id).id)
    engine.dispose()
    assert summary.first_result_at and summary.last_result_at
    seconds = (summary.last_result_at - summary.first_result_at).total_seconds()
    return summary.results / seconds, summary.results, summary.error


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path, nargs="?")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgbatch-bucket-") as tmp, local_redis() as redis_url:
        work = Path(tmp)
        root = args.directory.resolve() if args.directory else work / "images"
        if args.directory:  # all of its images, on disk and in the bucket alike
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            files = make_variants(root, args.images, seed=0, max_side=512)
        moto, endpoint = start_moto(work / "moto.log")
        try:
            upload(endpoint, root, files)
            env = {
                **os.environ,
                **STORE_ENV,
                "AWS_ENDPOINT_URL": endpoint,
                "IMGBATCH_REDIS_URL": redis_url,
                "IMGBATCH_DATA_DIR": tmp,
                "IMGBATCH_DATABASE_URL": f"sqlite:///{tmp}/imgbatch.db",
            }
            rates: dict[str, float] = {}
            sources = [("disk", str(root)), ("bucket", f"s3://{BUCKET}/images/")]
            for i, (kind, source) in enumerate(sources * 2):
                rate, results, errors = run_job(env, source, work / f"worker-{i}.log")
                rates[kind] = max(rate, rates.get(kind, 0.0))
                print(f"{kind:6s} {source}: {rate:7.1f} images/s ({results} results, {errors} errors)")
        finally:
            moto.kill()
            moto.wait()
        print(f"bucket / disk: {rates['bucket'] / rates['disk']:.2f}  ({len(files)} images, best of 2 each)")


if __name__ == "__main__":
    main()
