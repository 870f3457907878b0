"""Several worker processes share one job with identical results; workers expose Prometheus metrics
summed over their pool processes and emit Celery task events."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from imgbatch.core.samples import make_variants
from imgbatch.producer.local_redis import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("replica-photos")
    make_variants(directory, 240, seed=21, max_side=480)
    return directory


def _results(env: dict[str, str], job_id: str) -> dict[str, dict[str, Any]]:
    proc = run_cli(["results", job_id, "--format", "jsonl"], env)
    assert proc.returncode == 0, proc.stderr
    return {r["path"]: r for r in map(json.loads, proc.stdout.splitlines())}


def test_one_then_three_worker_processes_give_identical_results(
    job_dir: Path, service_env: dict[str, str], start_worker: Any
) -> None:
    env = {**service_env, "IMGBATCH_ORT_THREADS": "1", "IMGBATCH_BATCH_SIZE": "8"}
    single = start_worker(env, concurrency=1)
    proc = run_cli(["submit", str(job_dir), "--wait"], env)
    assert proc.returncode == 0, proc.stderr
    one = _results(env, proc.stdout.split()[-1])
    single.stop()

    for _ in range(3):  # three separate worker processes, as on three hosts
        start_worker(env, concurrency=1)
    proc = run_cli(["submit", str(job_dir), "--wait", "--new"], env)
    assert proc.returncode == 0, proc.stderr
    three = _results(env, proc.stdout.split()[-1])

    assert len(one) == len(three) == 240
    assert len({r["worker"] for r in one.values()}) == 1
    assert len({r["worker"] for r in three.values()}) == 3, "the three workers did not share the job"
    for path, a in one.items():
        b = three[path]
        assert (a["status"], a["class_index"]) == (b["status"], b["class_index"]), path
        assert abs(a["score"] - b["score"]) < 1e-5, path


def test_metrics_scrape_and_task_events(
    tmp_path: Path, photo_dir: Path, service_env: dict[str, str], start_worker: Any
) -> None:
    port = free_port()
    env = {**service_env, "IMGBATCH_METRICS_PORT": str(port)}
    start_worker(env, concurrency=2)

    from imgbatch.core.settings import Settings
    from imgbatch.worker.app import create_app

    app = create_app(Settings(redis_url=env["IMGBATCH_REDIS_URL"]))

    events: list[dict[str, Any]] = []
    stop = threading.Event()

    def listen() -> None:
        with app.connection_for_read(env["IMGBATCH_REDIS_URL"]) as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            for _ in receiver.itercapture(limit=None, timeout=1, wakeup=True):
                if stop.is_set():
                    return

    listener = threading.Thread(target=lambda: _ignore_timeouts(listen, stop), daemon=True)
    listener.start()
    time.sleep(1.0)
    (tmp_path / "jobdir").mkdir()
    for photo in photo_dir.iterdir():
        (tmp_path / "jobdir" / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "jobdir" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    proc = run_cli(["submit", str(tmp_path / "jobdir"), "--wait", "--batch-size", "3"], env)
    assert proc.returncode == 0, proc.stderr
    ok = len(list(photo_dir.iterdir()))

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("imgbatch_")
    }
    assert samples['imgbatch_images_total{status="ok"}'] == ok
    assert samples['imgbatch_images_total{status="error"}'] == 1
    assert samples['imgbatch_stage_seconds_count{stage="infer"}'] == ok + 1
    assert samples["imgbatch_batches_total"] == 3  # 9 images in batches of 3
    assert samples['imgbatch_stage_seconds_sum{stage="persist"}'] > 0

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e.get("type") == "task-succeeded" for e in events):
        time.sleep(0.2)
    stop.set()
    kinds = {e.get("type") for e in events}
    assert {"task-received", "task-started", "task-succeeded"} <= kinds, kinds


def _ignore_timeouts(fn: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            fn()
        except TimeoutError:
            continue
        except OSError:
            continue


def test_status_watch_follows_a_job_to_the_end(
    job_dir: Path, service_env: dict[str, str], start_worker: Any
) -> None:
    import subprocess
    import sys

    submitted = run_cli(["submit", str(job_dir)], service_env)  # queued; nobody works on it yet
    job_id = submitted.stdout.split()[-1]
    watch = subprocess.Popen(
        [sys.executable, "-m", "imgbatch", "status", job_id, "--watch"],
        env=service_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    assert watch.poll() is None, "--watch returned while the job was pending"
    start_worker(service_env, concurrency=2)
    out, err = watch.communicate(timeout=120)
    assert watch.returncode == 0, err
    assert "state=done" in out and "pending=0" in out and "240/240" in err
