"""Shared fixtures: a real Redis, real databases (SQLite always, PostgreSQL when reachable),
the real INT8 model, and real Celery worker processes.

Isolation on the shared services: Redis tests claim an empty database index on the local server
(or start their own redis-server when none is reachable), and each PostgreSQL run gets a freshly
created database that is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("IMGBATCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
LOCAL_REDIS = os.environ.get("IMGBATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_KEY = "imgbatch:test-claim"


# ---------------------------------------------------------------------------- Redis
def _claim_redis_db(base_url: str) -> tuple[str, redis.Redis] | None:
    """An empty database index on a reachable server, claimed so parallel runs don't share it."""
    try:
        redis.Redis.from_url(base_url, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError:
        return None
    token = uuid.uuid4().hex
    for index in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base_url}/{index}")
        if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=3600):
            return f"{base_url}/{index}", client
    return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    claimed = _claim_redis_db(LOCAL_REDIS)
    if claimed is not None:
        url, client = claimed
        yield url
        client.flushdb()
        return
    # No Redis reachable (or every index busy): a private server, never a silent skip.
    from imgbatch.producer.local_redis import local_redis

    with local_redis() as url:
        yield url


@pytest.fixture
def broker() -> Iterator:  # type: ignore[type-arg]
    """A private redis-server of this test's own, which it may kill and restart empty."""
    from faults import RestartableRedis

    server = RestartableRedis()
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------- databases
def _postgres_reachable() -> bool:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    import psycopg

    name = f"imgbatch_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test: SQLite always, PostgreSQL when the server is reachable."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'imgbatch.db'}"
        return
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable in CI")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable")
    with fresh_postgres_database() as url:
        yield url


# ---------------------------------------------------------------------------- model
@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real EfficientNet-Lite0 INT8 model (default recipe, gate on), built once per run unless
    IMGBATCH_TEST_MODEL names one; never the user's own model in their data dir. The report's speed
    benchmarks are skipped here: tests check behaviour, `imgbatch export` measures."""
    configured = os.environ.get("IMGBATCH_TEST_MODEL")
    if configured:
        return Path(configured)
    from imgbatch.export.build import ExportOptions, build_model

    path = tmp_path_factory.mktemp("model") / "efficientnet_lite0.int8.onnx"
    return build_model(path, options=ExportOptions(eval_count=64, benchmark=False)).path


# ---------------------------------------------------------------------------- photos
@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled real photos as JPEG files: cat.jpg, coffee.jpg, ..."""
    from imgbatch.core.samples import write_photos

    directory = tmp_path_factory.mktemp("photos")
    write_photos(directory)
    return directory


# ---------------------------------------------------------------------------- processes
def imgbatch_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGBATCH_")}
    env["IMGBATCH_DATA_DIR"] = str(tmp_path / "data")
    env.update(overrides)
    return env


def run_cli(
    args: list[str],
    env: dict[str, str],
    timeout: float = 300,
    cwd: Path | None = None,
    stdin: int | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgbatch", *args],
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A user error: exit code 2, exactly one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("imgbatch: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


class WorkerProcess:
    """`imgbatch worker` as a real child process; stopped (or killed) at teardown."""

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 1, prefix: list[str] | None = None
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "imgbatch", "worker", "--concurrency", str(concurrency)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def service_env(tmp_path: Path, redis_url: str, db_url: str, model_path: Path) -> dict[str, str]:
    """Environment for processes sharing this test's Redis, database and model (own queue per test)."""
    return imgbatch_env(
        tmp_path,
        IMGBATCH_REDIS_URL=redis_url,
        IMGBATCH_DATABASE_URL=db_url,
        IMGBATCH_MODEL=str(model_path),
        IMGBATCH_QUEUE_NAME=f"imgbatch-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[WorkerProcess] = []

    def start(
        env: dict[str, str], concurrency: int = 1, wait: bool = True, prefix: list[str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", concurrency, prefix)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault tests' figures (tests/faults.py), as the closing note's table."""
    from faults import FAULT_TABLE

    if FAULT_TABLE:
        terminalreporter.section("fault table (nobody waiting)")
        terminalreporter.write_line(
            "| fault | waiter | database | images | rows | distinct | pending | time to done |"
        )
        terminalreporter.write_line("|---|---|---|---|---|---|---|---|")
        for row in FAULT_TABLE:
            terminalreporter.write_line(row)


# ---------------------------------------------------------------------------- object store
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # type: ignore[type-arg]
    """moto's standalone S3 server on 127.0.0.1 (a free port) for the whole session; processes reach
    it through `s3_server.env()` (the standard AWS variables), never through this process's environ."""
    from s3server import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()
