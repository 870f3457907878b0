"""Real-process fault injection helpers: a Redis server we can restart, a TCP proxy we can cut,
and process-tree inspection. Used by the slow fault tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from sqlalchemy import func, select

from imgbatch.db.engine import make_engine, session_factory
from imgbatch.db.models import Image, ImageStatus, Result
from imgbatch.producer.local_redis import free_port, start_redis_server


class RestartableRedis:
    """A private redis-server on a fixed port that keeps nothing on disk: a restart comes back empty."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="imgbatch-test-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis_server(self.port, self.dir, self.password)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # like a crash: whatever it held is gone
            self.proc.wait()

    def queue_length(self, queue: str) -> int:
        return int(redis.Redis.from_url(self.url).llen(queue))


class CuttableProxy:
    """A TCP proxy to a real server; `cut(seconds)` drops every connection and refuses new ones."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.down_until = 0.0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut(0)


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every process below `pid`: children, their children, ..."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class JobCounter:
    """Reads a job's rows straight from the database, for assertions of exactly-once."""

    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        self.sessions = session_factory(self.engine)

    def results(self, job_id: str | None = None) -> int:
        with self.sessions() as s:
            query = select(func.count()).select_from(Result)
            if job_id:
                query = query.where(Result.job_id == job_id)
            return s.scalar(query) or 0

    def exactly_once(self, job_id: str) -> tuple[int, int, int, int]:
        """(images, result rows, distinct images with a result, images still pending)."""
        with self.sessions() as s:
            images = s.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) or 0
            rows = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) or 0
            distinct_ids = select(func.count(func.distinct(Result.image_id))).where(Result.job_id == job_id)
            distinct = s.scalar(distinct_ids) or 0
            pending_q = select(func.count()).select_from(Image)
            pending = (
                s.scalar(pending_q.where(Image.job_id == job_id, Image.state == ImageStatus.PENDING)) or 0
            )
        return images, rows, distinct, pending

    def wait_for_results(self, at_least: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.results() >= at_least:
                    return
            except Exception:  # the schema may not exist yet
                pass
            time.sleep(0.1)
        raise AssertionError(f"fewer than {at_least} results after {timeout} s")

    def close(self) -> None:
        self.engine.dispose()


# ---------------------------------------------------------------------------- jobs with nobody waiting
def job_state(counter: JobCounter, job_id: str) -> str | None:
    from imgbatch.db.models import Job

    with counter.sessions() as s:
        state = s.scalar(select(Job.state).where(Job.id == job_id))
    return None if state is None else str(state)


def wait_done(counter: JobCounter, job_id: str, timeout: float = 240) -> float:
    """Seconds until the job is done, polling the database (no CLI waits for it)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if job_state(counter, job_id) == "done":
                return time.monotonic() - start
        except Exception:  # the database may be cut by the test
            pass
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done after {timeout} s: {counter.exactly_once(job_id)}")


FAULT_TABLE: list[str] = []


def record_fault(
    fault: str, database: str, counter: JobCounter, job_id: str, seconds: float
) -> tuple[int, ...]:
    """One row of the closing note's table, printed at the end of the run (conftest)."""
    images, rows, distinct, pending = counter.exactly_once(job_id)
    FAULT_TABLE.append(
        f"| {fault} | none | {database} | {images} | {rows} | {distinct} | {pending} | {seconds:.1f} s |"
    )
    return images, rows, distinct, pending


# ---------------------------------------------------------------------------- a stuck mount (FUSE)
class HangMount:
    """tests/hangfs.py mounted at `mountpoint`: files whose reads (or directories whose listings)
    never return until `open_gate()`."""

    def __init__(self, mountpoint: Path, specs: list[str]) -> None:
        import sys

        self.mountpoint = mountpoint
        self.gate = Path(tempfile.mkdtemp(prefix="imgbatch-gate-")) / "open"
        mountpoint.mkdir(parents=True, exist_ok=True)
        script = Path(__file__).with_name("hangfs.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(mountpoint), str(self.gate), *specs],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"FUSE mount failed (libfuse2 and fusepy installed?): {err}")
            time.sleep(0.05)

    def open_gate(self) -> None:
        self.gate.touch()

    def close(self) -> None:
        self.open_gate()
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
