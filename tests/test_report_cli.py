"""`imgbatch report` on jobs written through db.writes (no model needed): content, bounds, bad input."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from conftest import assert_one_line_error, imgbatch_env, run_cli
from imgbatch.core.preprocess import PreprocessSpec, open_image
from imgbatch.db.engine import ensure_schema, make_engine, session_factory
from imgbatch.db.models import Image as ImageRow
from imgbatch.db.writes import add_images, create_job, save_results
from imgbatch.report.build import ReportOptions, build_report
from imgbatch.report.thumbs import make_thumb

THUMB_RE = re.compile(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


def _result(job: str, image_id: int, label: str | None, score: float, error: str | None = None) -> dict:  # type: ignore[type-arg]
    return {
        "job_id": job,
        "image_id": image_id,
        "status": "error" if error else "ok",
        "label": label,
        "class_index": None if error else 7,
        "score": None if error else score,
        "top5": None if error else [[7, label, score], [8, "runner-up", 0.01]],
        "error": error,
        "queue_ms": 5.0 + image_id % 7,
        "decode_ms": 3.0 + image_id % 5,
        "infer_ms": 9.0 + image_id % 3,
        "persist_ms": 0.5,
        "batch_size": 8,
        "worker": f"host:{100 + image_id % 2}",
        "model_sha256": "b" * 64,
    }


def _synthetic_job(db_url: str, job: str, root: Path, paths: list[str], label_of, with_results: bool = True):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    ensure_schema(engine)
    with session_factory(engine).begin() as session:
        create_job(session, job, [str(root)], "/models/m.onnx", "b" * 64, 8)
        add_images(session, job, paths)
        rows = session.execute(select(ImageRow.id, ImageRow.path).where(ImageRow.job_id == job)).all()
        if with_results:
            save_results(session, [_result(job, i, *label_of(i, p)) for i, p in rows])
    engine.dispose()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.fixture
def small_job(tmp_path: Path, photo_dir: Path, env: dict[str, str]) -> Path:
    """cat.jpg, coffee.jpg, a broken file, and gone.jpg, which is deleted after the job ran."""
    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy(photo_dir / "cat.jpg", root / "cat.jpg")
    shutil.copy(photo_dir / "coffee.jpg", root / "coffee.jpg")
    (root / "broken.jpg").write_bytes(b"junk")
    odd = os.fsdecode(b"caf\xe9.jpg")  # not valid UTF-8: the database keeps its exact bytes
    shutil.copy(photo_dir / "coffee.jpg", root / odd)
    labels = {"cat.jpg": ("tabby", 0.81), "coffee.jpg": ("espresso", 0.4), "gone.jpg": ("tabby", 0.3)}

    def label_of(_id: int, path: str):  # type: ignore[no-untyped-def]
        name = Path(path).name
        if name == "broken.jpg":
            return None, 0.0, f"not a decodable image: cannot identify image file '{path}'"
        return labels.get(name, ("espresso", 0.6))

    paths = [str(root / n) for n in ("cat.jpg", "coffee.jpg", "broken.jpg", "gone.jpg", odd)]
    _synthetic_job(env["IMGBATCH_DATABASE_URL"], "job1" + "0" * 28, root, paths, label_of)
    return root


def test_report_shows_gallery_errors_charts_and_missing_files(
    small_job: Path, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    proc = run_cli(["report", "job1", "-o", str(out)], env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "written to" in proc.stderr
    html = out.read_text()
    for needle in ('id="gallery"', 'id="doubtful"', 'id="errors"', 'id="charts"', "tabby", "espresso"):
        assert needle in html
    assert "broken.jpg" in html and "not a decodable image" in html
    assert html.count('id="chart-') == 4  # stage latencies, images/s per worker, scores, labels
    # gone.jpg is a card, not a crash; the non-UTF-8 name is opened by its exact bytes, not missing.
    assert html.count("file missing") == 2  # in the gallery and among the least confident
    assert len(THUMB_RE.findall(html)) == 6  # cat, coffee, café: gallery and least confident
    assert "host:100" in html and "b" * 64 in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "url(" not in html


def test_report_compare_lists_changed_labels(small_job: Path, env: dict[str, str], tmp_path: Path) -> None:
    paths = [str(small_job / n) for n in ("cat.jpg", "coffee.jpg")]
    _synthetic_job(
        env["IMGBATCH_DATABASE_URL"],
        "job2" + "0" * 28,
        small_job,
        paths,
        lambda _i, p: ("tiger cat", 0.6) if p.endswith("cat.jpg") else ("espresso", 0.5),
    )
    out = tmp_path / "cmp.html"
    proc = run_cli(["report", "job1", "--compare", "job2", "-o", str(out)], env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    section = html[html.index('id="changes"') :]
    assert "1 of 2 images" in section and "tiger cat" in section and "cat.jpg" in section
    assert "coffee.jpg" not in section


def test_thumbnails_follow_exif_orientation_like_the_workers(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, to be shown rotated 90 degrees: portrait
    Image.new("RGB", (300, 150), (200, 30, 30)).save(path, exif=exif)
    worker_view = open_image(path, PreprocessSpec())
    assert worker_view.size == (150, 300)
    roots = [os.fsencode(tmp_path.resolve())]
    thumb = make_thumb(str(path), roots)
    assert thumb.uri is not None
    decoded = Image.open(io.BytesIO(base64.b64decode(thumb.uri.split(",", 1)[1])))
    assert decoded.size == (64, 128)
    assert make_thumb(str(tmp_path / "nope.jpg"), roots).missing
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert make_thumb(str(tmp_path / "empty.jpg"), roots).problem == "empty file"
    # Only from inside the job's directories: a path the database names elsewhere is not opened.
    other = tmp_path / "job"
    other.mkdir()
    assert make_thumb(str(path), [os.fsencode(other.resolve())]).problem == "outside the job's directories"


def test_a_big_job_embeds_a_bounded_sample(tmp_path: Path, photo_dir: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'big.sqlite'}"
    photos = sorted(str(p) for p in photo_dir.iterdir())
    root = tmp_path / "big"
    root.mkdir()
    paths = [str(root / f"{i:05d}.jpg") for i in range(3000)]
    # Every path is a hard link to a real photo, so thumbnails are really decoded (a symlink out of
    # the job's directory would be refused, as a worker refuses it).
    for i, p in enumerate(paths):
        os.link(photos[i % len(photos)], p)
    _synthetic_job(
        db_url, "big" + "0" * 29, root, paths, lambda i, _p: (f"label {i % 300:03d}", (i % 97) / 97)
    )
    engine = make_engine(db_url)
    opts = ReportOptions(per_label=4, max_gallery_thumbs=40, lowest=10)
    with session_factory(engine)() as session:
        html = build_report(session, "big" + "0" * 29, options=opts)
    engine.dispose()
    assert html.count('<details class="group"') == 10  # 40 thumbnails / 4 per label
    assert len(THUMB_RE.findall(html)) == 40 + 10
    assert "290 more labels" in html  # counted, not shown
    assert len(html) < 1_000_000


def test_unknown_job(env: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(run_cli(["report", "-o", str(tmp_path / "r.html")], env), "no jobs yet")
    assert_one_line_error(run_cli(["report", "nope", "-o", str(tmp_path / "r.html")], env), "no job 'nope'")
    assert not (tmp_path / "r.html").exists()


def test_unknown_compare_job(small_job: Path, env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(["report", "job1", "--compare", "zzzz", "-o", str(tmp_path / "r.html")], env)
    assert_one_line_error(proc, "no job 'zzzz'")


def test_job_without_results(env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _synthetic_job(
        env["IMGBATCH_DATABASE_URL"],
        "fresh" + "0" * 27,
        root,
        [str(root / "a.jpg")],
        None,
        with_results=False,
    )
    proc = run_cli(["report", "fresh", "-o", str(tmp_path / "r.html")], env)
    assert_one_line_error(proc, "has no results yet", "1 images pending")
    assert not (tmp_path / "r.html").exists()


def test_output_that_cannot_be_written(small_job: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli(["report", "job1", "-o", str(tmp_path / "no" / "such" / "r.html")], env), "no such directory"
    )
    assert_one_line_error(run_cli(["report", "job1", "-o", str(tmp_path)], env), "is a directory")
    a_file = small_job / "cat.jpg"
    assert_one_line_error(
        run_cli(["report", "job1", "-o", str(a_file / "r.html")], env), "cannot write report"
    )


def test_output_that_is_not_a_regular_file_is_refused(
    small_job: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """As root a report once replaced a device file and a FIFO: anything but a regular file is refused,
    and `-o -` is stdout, not a file named `-`."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/null"), tmp_path):
        assert_one_line_error(run_cli(["report", "job1", "-o", str(target)], env), "refusing to write report")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISCHR(Path("/dev/null").lstat().st_mode)
    out = run_cli(["report", "job1", "-o", "-"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<!DOCTYPE html>") and not (tmp_path / "-").exists()
    existing = tmp_path / "old.html"
    existing.write_text("old")
    assert run_cli(["report", "job1", "-o", str(existing)], env).returncode == 0
    assert existing.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
