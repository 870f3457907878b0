"""Benchmark: listing 1,000,000 object keys through imgbatch's listing function (producer side).

What is measured is `imgbatch.core.stores.list_objects(url) -> Iterator[(url, size)]` iterated to the
end in a child process (s3fs -> ListObjectsV2, 1,000 keys a page), with its wall clock and peak RSS
(GNU time's %M; the issue's target is <= 300 MB).

The server: moto's standalone `moto_server` first gets a sample of keys put into it, timed; when
putting 1,000,000 would take longer than `--moto-budget-s` (10 minutes), the million keys come
from a small paginated ListObjectsV2 stub instead (stdlib http.server in this process, the S3 XML
of real answers, 1,000 generated keys a page), which s3fs reaches through AWS_ENDPOINT_URL as it
would any S3-compatible server. The script says which it used. The moto sample is also listed
through the same function, so the two servers can be compared on the same code.

    .venv/bin/python scripts/bench_listing.py [--keys 1000000] [--moto-sample 10000] [--stub-only]
    .venv/bin/python scripts/bench_listing.py --plain-s3fs   # no imgbatch listing function needed
    .venv/bin/python scripts/bench_listing.py --stub-only --submit-redis redis://127.0.0.1:6379/0 \
        --model MODEL.onnx   # also `imgbatch submit` of the million keys into SQLite (Redis: a ping)

Needs GNU time at /usr/bin/time. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

BUCKET = "bench-bucket"
PREFIX = "photos/"
PAGE = 1000
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret-key"}

# The child: list through the project's function (or plain s3fs pages, to try the stub alone).
LISTER = """
import sys, time
url, plain = sys.argv[1], sys.argv[2] == "plain"
start = time.perf_counter()
count = total = 0
if plain:
    import fsspec
    from fsspec.asyn import sync

    fs = fsspec.filesystem("s3")
    bucket, _, prefix = url.split("://", 1)[1].partition("/")

    async def pages():
        out = []
        async for info in fs._iterdir(bucket, delimiter="", prefix=prefix):
            out.append(int(info["size"]))
        return out

    def listing():
        # Whole listing gathered by s3fs; only for checking the stub, not a figure.
        for size in sync(fs.loop, pages):
            yield url, size
    objects = listing()
else:
    from imgbatch.core.stores import list_objects
    objects = list_objects(url)
for _url, size in objects:
    count += 1
    total += size
print(f"{count} {total} {time.perf_counter() - start:.3f}")
"""


# ---------------------------------------------------------------------------- the listing stub
def key_of(i: int) -> str:
    """The i-th generated key: 1,000 images per 'directory', names as cameras write them."""
    return f"{PREFIX}{i // 1000:04d}/IMG_{i:07d}.jpg"


def size_of(i: int) -> int:
    return 150_000 + (i * 7919) % 4_000_000


def page_xml(query: dict[str, list[str]], keys: int) -> bytes:
    """One ListObjectsV2 answer over the generated keys (prefix, continuation-token, start-after,
    max-keys honoured; generated keys sort by index, so a token is an index)."""
    prefix = query.get("prefix", [""])[0]
    token = query.get("continuation-token", [None])[0]
    max_keys = min(int(query.get("max-keys", [str(PAGE)])[0]), PAGE)
    start = int(token) if token else 0
    after = query.get("start-after", [None])[0]
    if after and not token:
        while start < keys and key_of(start) <= after:
            start += 1
    if not (PREFIX.startswith(prefix) or prefix.startswith(PREFIX)):
        start = keys  # no key under another prefix
    while start < keys and not key_of(start).startswith(prefix):
        start += 1
    end = min(keys, start + max_keys)
    truncated = end < keys and key_of(end).startswith(prefix)
    contents = "".join(
        f"<Contents><Key>{escape(key_of(i))}</Key><LastModified>2026-11-30T09:00:00.000Z</LastModified>"
        f'<ETag>"{hashlib.md5(str(i).encode()).hexdigest()}"</ETag><Size>{size_of(i)}</Size>'
        "<StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(start, end)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{BUCKET}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{end - start}</KeyCount>"
        f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
        + (f"<ContinuationToken>{token}</ContinuationToken>" if token else "")
        + (f"<NextContinuationToken>{end}</NextContinuationToken>" if truncated else "")
        + contents
        + "</ListBucketResult>"
    ).encode()


class StubHandler(BaseHTTPRequestHandler):
    """Just what listing a bucket takes: ListObjectsV2, the bucket's location, HEAD bucket."""

    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    keys = 0
    pages_served = 0

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        bucket = urlsplit(self.path).path.strip("/")
        self._send(200 if bucket == BUCKET else 404)

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if parts.path.strip("/") != BUCKET:
            self._send(404, b"<Error><Code>NoSuchBucket</Code><Message>no such bucket</Message></Error>")
        elif "location" in query:
            self._send(200, b'<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>')
        elif query.get("list-type") == ["2"]:
            type(self).pages_served += 1
            self._send(200, page_xml(query, self.keys))
        else:
            self._send(501, b"<Error><Code>NotImplemented</Code><Message>stub</Message></Error>")


@contextlib.contextmanager
def listing_stub(keys: int) -> Iterator[str]:
    handler = type("Handler", (StubHandler,), {"keys": keys, "pages_served": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- moto
@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise SystemExit("moto_server is not installed (pip install 'moto[server]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto_server did not start: {log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def put_keys(endpoint: str, first: int, end: int) -> float:
    """Seconds to put keys first..end-1 (small objects) into moto (s3fs, concurrent PUTs)."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"endpoint_url": endpoint},
        skip_instance_cache=True,
    )
    if first == 0:
        fs.mkdir(BUCKET)
    start = time.perf_counter()
    for low in range(first, end, 1000):
        fs.pipe({f"{BUCKET}/{key_of(i)}": b"x" for i in range(low, min(end, low + 1000))})
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- measuring
def list_in_child(endpoint: str, plain: bool, work: Path) -> tuple[int, int, float, float, float]:
    """(objects, total bytes, seconds inside the child, wall clock, peak RSS MB) of one listing."""
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    usage = work / "time.txt"
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(usage), sys.executable, "-c", LISTER]
        + [f"s3://{BUCKET}/{PREFIX}", "plain" if plain else "imgbatch"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"listing failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    count, total, inner = proc.stdout.split()
    return int(count), int(total), float(inner), wall, int(usage.read_text().split()[-1]) / 1024


def submit_in_child(endpoint: str, redis_url: str, model: str, work: Path) -> tuple[float, float, int, str]:
    """(wall clock, peak RSS MB, images recorded, last line) of `imgbatch submit s3://...` into a
    fresh SQLite database: the listing plus the image rows, IMGBATCH_SCAN_CHUNK per transaction.
    Redis is only pinged by submit (sending is the workers' job)."""
    import sqlite3

    db = work / "submit.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGBATCH_")}
    env.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    env.update(IMGBATCH_DATABASE_URL=f"sqlite:///{db}", IMGBATCH_REDIS_URL=redis_url, IMGBATCH_MODEL=model)
    env.update(IMGBATCH_DATA_DIR=str(work / "data"))
    usage = work / "submit-time.txt"
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(usage), sys.executable, "-m", "imgbatch", "submit"]
        + [f"s3://{BUCKET}/{PREFIX}", "--new"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"submit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (images,) = conn.execute("SELECT count(*) FROM images").fetchone()
    rss_mb = int(usage.read_text().split()[-1]) / 1024
    return wall, rss_mb, images, proc.stdout.strip().splitlines()[-1]


def report(what: str, figures: tuple[int, int, float, float, float]) -> None:
    count, total, inner, wall, rss_mb = figures
    print(
        f"  {what}: {count:,} objects ({total / 2**30:,.1f} GiB listed) in {wall:.1f} s wall "
        f"({inner:.1f} s listing, {count / max(inner, 1e-9):,.0f} keys/s), peak RSS {rss_mb:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--moto-sample", type=int, default=10_000)
    parser.add_argument("--moto-budget-s", type=float, default=600.0)
    parser.add_argument("--stub-only", action="store_true", help="Skip moto; list the stub.")
    parser.add_argument("--plain-s3fs", action="store_true", help="List with s3fs, not imgbatch.")
    parser.add_argument(
        "--submit-redis", metavar="URL", help="Also time `imgbatch submit` of the stub's keys (pings URL)."
    )
    parser.add_argument(
        "--model", default=os.environ.get("IMGBATCH_TEST_MODEL", ""), help="For --submit-redis."
    )
    args = parser.parse_args()
    lister = "plain s3fs pages" if args.plain_s3fs else "imgbatch.core.stores.list_objects"
    print(f"cpus: {os.cpu_count()} (machine shared with other work: figures are indicative)")
    use_moto = False
    with tempfile.TemporaryDirectory(prefix="imgbatch-bench-listing-") as scratch:
        work = Path(scratch)
        if not args.stub_only:
            with moto_server(work / "moto.log") as endpoint:
                put_s = put_keys(endpoint, 0, args.moto_sample)
                projected = put_s * args.keys / args.moto_sample
                print(
                    f"moto_server: put {args.moto_sample:,} keys in {put_s:.1f} s "
                    f"-> {args.keys:,} would take ~{projected / 60:.0f} min"
                )
                report(f"moto, {lister}", list_in_child(endpoint, args.plain_s3fs, work))
                use_moto = projected <= args.moto_budget_s
                if use_moto:
                    put_keys(endpoint, args.moto_sample, args.keys)
                    report(
                        f"moto, {args.keys:,} keys, {lister}", list_in_child(endpoint, args.plain_s3fs, work)
                    )
        if not use_moto:
            print(f"listing stub (ListObjectsV2, {PAGE} keys a page, {args.keys:,} generated keys):")
            with listing_stub(args.keys) as endpoint:
                report(lister, list_in_child(endpoint, args.plain_s3fs, work))
                if args.submit_redis:
                    wall, rss_mb, images, said = submit_in_child(
                        endpoint, args.submit_redis, args.model, work
                    )
                    what = f"imgbatch submit (listing + {images:,} image rows into SQLite)"
                    print(f"  {what}: {wall:.1f} s wall, peak RSS {rss_mb:.0f} MB [job {said}]")


if __name__ == "__main__":
    main()
