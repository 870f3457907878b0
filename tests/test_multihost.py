"""Two workers on two "hosts" finish one job together, with no shared image directory.

Each worker runs in its own network namespace, linked to this machine by a veth pair on a private
bridge, under its own hostname. The job is an s3:// prefix on a moto server bound to the bridge's
address; Redis and PostgreSQL (which listen on 127.0.0.1 here) are reached through TCP relays on that
address only: from inside a namespace, 127.0.0.1 is the namespace's own loopback, where nothing runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from conftest import PG_ADMIN_URL, _postgres_reachable, fresh_postgres_database, imgbatch_env, run_cli
from faults import JobCounter
from imgbatch.db.models import Image, Result
from netns import Host, TcpRelay, hosts, netns_unavailable
from s3server import MotoServer

pytestmark = pytest.mark.slow

IMAGES = 48


def _unreachable_inside(host: Host, port: int) -> bool:
    """Whether 127.0.0.1:`port` (a service of this machine) cannot be reached from inside `host`."""
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    proc = subprocess.run(
        ["ip", "netns", "exec", host.netns, sys.executable, "-c", code], capture_output=True, timeout=30
    )
    return proc.returncode != 0


def test_two_workers_on_two_hosts_share_one_bucket_job(
    tmp_path: Path, photo_dir: Path, redis_url: str, model_path: Path, start_worker: Any
) -> None:
    why = netns_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    if not _postgres_reachable():
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed for this test")
    from imgbatch.core.samples import make_variants

    photos = make_variants(tmp_path / "photos", IMAGES, seed=7, max_side=384)
    redis_parts = urlsplit(redis_url)
    with hosts(2) as machines, fresh_postgres_database() as db_url:
        gateway = machines[0].gateway
        s3 = MotoServer(tmp_path / "moto.log", host=gateway).start()
        pg_parts = urlsplit(db_url)
        redis_relay = TcpRelay(gateway, (redis_parts.hostname or "", redis_parts.port or 6379))
        pg_relay = TcpRelay(gateway, (pg_parts.hostname or "", pg_parts.port or 5432))
        try:
            s3.upload("fleet", {f"photos/{p.name}": p.read_bytes() for p in photos})
            relayed_db = db_url.replace(pg_parts.netloc, f"postgres@{gateway}:{pg_relay.address[1]}")
            env = {
                **imgbatch_env(
                    tmp_path,
                    IMGBATCH_REDIS_URL=f"redis://{gateway}:{redis_relay.address[1]}{redis_parts.path}",
                    IMGBATCH_DATABASE_URL=relayed_db,
                    IMGBATCH_MODEL=str(model_path),
                    IMGBATCH_QUEUE_NAME=f"imgbatch-multihost-{os.getpid()}",
                ),
                **s3.env(),
            }
            for host in machines:
                assert _unreachable_inside(host, redis_parts.port or 6379)
                assert _unreachable_inside(host, pg_parts.port or 5432)
            workers = [
                start_worker(env, concurrency=1, prefix=host.prefix(f"imgbatch-host-{i}"))
                for i, host in enumerate(machines)
            ]
            done = run_cli(["submit", "s3://fleet/photos/", "--batch-size", "4", "--wait"], env)
            assert done.returncode == 0, done.stderr
            job_id = done.stdout.strip().splitlines()[-1]
            for worker in workers:
                worker.stop()
            counter = JobCounter(db_url)
            assert counter.exactly_once(job_id) == (IMAGES, IMAGES, IMAGES, 0)
            with counter.sessions() as s:
                rows = s.execute(
                    select(Image.path, Result.status, Result.worker)
                    .join(Result, Result.image_id == Image.id)
                    .where(Result.job_id == job_id)
                ).all()
            counter.engine.dispose()
        finally:
            redis_relay.close()
            pg_relay.close()
            s3.stop()
        per_host = Counter(r.worker.split(":")[0] for r in rows)
        print(f"\nmulti-host: S3, Redis and PostgreSQL at {gateway} (moto :{s3.port}, relays)")
        for i, host in enumerate(machines):
            name = f"imgbatch-host-{i}"
            print(f"  netns {host.netns}: address {host.address}/24, worker {name}: {per_host[name]} images")
        assert all(r.path.startswith("s3://fleet/photos/") and r.status == "ok" for r in rows)
        assert sorted(per_host) == ["imgbatch-host-0", "imgbatch-host-1"], per_host
