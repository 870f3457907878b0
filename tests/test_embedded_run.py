"""`imgbatch run` with no IMGBATCH_REDIS_URL: private redis-server, local workers, SQLite, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from conftest import imgbatch_env, run_cli
from faults import descendants
from imgbatch.core.samples import make_variants
from imgbatch.db.engine import make_engine, session_factory
from imgbatch.db.models import Result


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_run_without_arguments_classifies_the_sample_photos(tmp_path: Path, model_path: Path) -> None:
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    proc = run_cli(["run", "--workers", "1"], env)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "8 images, 8 ok, 0 errors" in out and "images/s" in out
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│ ")}
    assert "ok" in rows["cat.jpg"] and "ok" in rows["coffee.jpg"], proc.stdout
    assert "espresso" in rows["coffee.jpg"] or "cup" in rows["coffee.jpg"], proc.stdout
    db = make_engine(f"sqlite:///{tmp_path / 'data' / 'imgbatch.db'}")
    with session_factory(db)() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 8
    db.dispose()


def test_run_on_a_directory_gives_one_row_per_image(tmp_path: Path, model_path: Path) -> None:
    photos = tmp_path / "many"
    make_variants(photos, 120, seed=3, max_side=640)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    proc = run_cli(["run", str(photos), "--workers", "2", "--batch-size", "8"], env)
    assert proc.returncode == 0, proc.stderr
    assert "121 images, 120 ok, 1 error" in " ".join(proc.stdout.split())
    status = run_cli(["status"], env)
    assert "state=done" in status.stdout and "pending=0" in status.stdout


def test_ctrl_c_stops_workers_and_redis(tmp_path: Path, model_path: Path) -> None:
    photos = tmp_path / "many"
    make_variants(photos, 400, seed=4, max_side=900)
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgbatch", "run", str(photos), "--workers", "1", "--batch-size", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = make_engine(f"sqlite:///{tmp_path / 'data' / 'imgbatch.db'}", create_parent=True)
    deadline = time.monotonic() + 120
    started = 0
    while time.monotonic() < deadline and started == 0:  # wait until the job is under way
        time.sleep(0.5)
        try:
            with session_factory(db)() as session:
                started = session.scalar(select(func.count()).select_from(Result)) or 0
        except Exception:  # the schema may not exist yet
            started = 0
    helpers = descendants(proc.pid)
    assert started and helpers, "run never got going"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert "interrupted" in stderr and "resumes the job" in stderr, stderr
    time.sleep(0.5)
    assert not [pid for pid in helpers if _alive(pid)], "redis-server or workers outlived Ctrl-C"
    with session_factory(db)() as session:
        kept = session.scalar(select(func.count()).select_from(Result)) or 0
    assert 0 < kept < 400
    db.dispose()
    # Run again: the job resumes, and its rate is of the images classified in this run only.
    again = run_cli(["run", str(photos), "--workers", "1"], env)
    assert again.returncode == 0, again.stderr
    out = " ".join(again.stdout.split())
    assert "Resuming unfinished job" in out
    assert f"400 images, 400 ok, 0 errors ({400 - kept} in this run)" in out, out


def test_workers_decode_as_the_run_says(tmp_path: Path, model_path: Path) -> None:
    """`--decode` (and IMGBATCH_DECODE) reach the worker processes: the stored score of a 12 MP photo,
    where the two decoders' inputs differ by a few pixel levels, is the one the chosen decoder gives."""
    from PIL import Image

    from imgbatch.core.samples import load_photo
    from imgbatch.worker.classify import Classifier

    photos = tmp_path / "big"
    photos.mkdir()
    path = photos / "motorcycle.jpg"
    load_photo("motorcycle").resize((4032, 3024), Image.Resampling.BICUBIC).save(path, quality=90)
    expected = {
        decode: Classifier.load(model_path, 1, decode=decode).classify([str(path)])[0].top[0][2]  # type: ignore[index]
        for decode in ("exact", "fast")
    }
    assert abs(expected["exact"] - expected["fast"]) > 1e-3, expected
    for decode, args in (("exact", []), ("fast", ["--decode", "fast"])):
        env = imgbatch_env(tmp_path / decode, IMGBATCH_MODEL=str(model_path), IMGBATCH_RUNTIME="onnxruntime")
        proc = run_cli(["run", str(photos), "--workers", "1", *args], env)
        assert proc.returncode == 0, proc.stderr
        db = make_engine(f"sqlite:///{tmp_path / decode / 'data' / 'imgbatch.db'}")
        with session_factory(db)() as session:
            score = session.scalar(select(Result.score))
        db.dispose()
        assert score is not None and abs(score - expected[decode]) < 1e-4, (decode, score, expected)
