"""Every odd or hostile file ends as a correct result or a recorded error with a reason, the worker
stays alive, and its memory stays bounded through a decompression bomb."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import imgbatch_env, run_cli
from faults import JobCounter, children, peak_rss_mb
from imgbatch.core.samples import EXPECTED_CLASSES, load_photo

pytestmark = pytest.mark.slow
CAT = EXPECTED_CLASSES["cat"]
NON_UTF8_NAME = b"caf\xe9-cat.jpg"


def _bomb_png(path: Path, side: int = 30_000) -> None:
    """A 1-bit PNG of side x side pixels whose file is small: zero rows compress to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _make_files(job_dir: Path, outside: Path) -> dict[str, tuple[str, Any]]:
    """name -> ("ok", class set or None) or ("error", reason substring)."""
    cat = load_photo("cat")
    coffee = load_photo("coffee")
    expect: dict[str, tuple[str, Any]] = {}

    cat.save(job_dir / "cat.jpg", quality=92)
    expect["cat.jpg"] = ("ok", CAT)
    (job_dir / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = ("error", "empty file")
    data = (job_dir / "cat.jpg").read_bytes()
    (job_dir / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expect["truncated.jpg"] = ("error", "not a decodable image")
    (job_dir / "random.jpg").write_bytes(np.random.default_rng(1).bytes(20_000))
    expect["random.jpg"] = ("error", "not a decodable image")
    (job_dir / "notes.png").write_text("this is a text file, not a PNG\n" * 20)
    expect["notes.png"] = ("error", "not a decodable image")

    rgba = cat.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(job_dir / "alpha.png")
    expect["alpha.png"] = ("ok", CAT)
    cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(job_dir / "palette.png")
    expect["palette.png"] = ("ok", CAT)
    gray16 = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(job_dir / "sixteen-bit.png")
    assert Image.open(job_dir / "sixteen-bit.png").mode.startswith("I")
    expect["sixteen-bit.png"] = ("ok", None)
    cat.convert("L").save(job_dir / "grayscale.jpg", quality=92)
    expect["grayscale.jpg"] = ("ok", None)
    cat.convert("CMYK").save(job_dir / "cmyk.jpg", quality=92)
    expect["cmyk.jpg"] = ("ok", CAT)

    # Stored lying on its side; EXIF orientation 6 says "rotate 90 degrees clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    cat.transpose(Image.Transpose.ROTATE_90).save(job_dir / "exif-rotated.jpg", quality=92, exif=exif)
    expect["exif-rotated.jpg"] = ("ok", CAT)

    cat.save(
        job_dir / "animated.gif", save_all=True, append_images=[coffee.resize(cat.size)], duration=100, loop=0
    )
    assert Image.open(job_dir / "animated.gif").n_frames == 2
    expect["animated.gif"] = ("ok", CAT)  # the first frame
    cat.save(job_dir / "cat.webp", quality=90)
    expect["cat.webp"] = ("ok", CAT)
    cat.save(job_dir / "cat.tiff")
    expect["cat.tiff"] = ("ok", CAT)

    _bomb_png(job_dir / "bomb.png")
    assert (job_dir / "bomb.png").stat().st_size < 200_000
    expect["bomb.png"] = ("error", "too many pixels")

    shutil.copy(job_dir / "cat.jpg", job_dir / "vanishes.jpg")
    expect["vanishes.jpg"] = ("error", "file not found")
    shutil.copy(job_dir / "cat.jpg", job_dir / "unreadable.jpg")
    os.chmod(job_dir / "unreadable.jpg", 0)
    expect["unreadable.jpg"] = ("error", "permission denied")

    with open(os.path.join(os.fsencode(job_dir), NON_UTF8_NAME), "wb") as handle:
        handle.write(data)
    expect["caf\\xe9-cat.jpg"] = ("ok", CAT)

    cat.save(outside / "secret.jpg")
    (job_dir / "escape.jpg").symlink_to(outside / "secret.jpg")
    expect["escape.jpg"] = ("error", "outside the job's directories")

    os.mkfifo(job_dir / "fifo.jpg")  # recorded, and refused without blocking the worker
    expect["fifo.jpg"] = ("error", "not a regular file")
    (job_dir / "dangling.jpg").symlink_to(job_dir / "no-such-target.jpg")
    expect["dangling.jpg"] = ("error", "broken symbolic link")
    # Dangling towards outside: its target is not there, which is what the user can fix.
    (job_dir / "dangling-out.jpg").symlink_to(outside / "gone-too.jpg")
    expect["dangling-out.jpg"] = ("error", "broken symbolic link")
    # 138 bytes that used to cost 17 s and gigabytes in the resize.
    Image.new("RGB", (20_000, 1)).save(job_dir / "strip.png")
    expect["strip.png"] = ("error", "extreme aspect ratio")
    return expect


def test_hostile_and_odd_files(
    tmp_path: Path, service_env: dict[str, str], start_worker: Any, db_url: str
) -> None:
    job_dir, outside = tmp_path / "photos", tmp_path / "outside"
    job_dir.mkdir()
    outside.mkdir()
    expect = _make_files(job_dir, outside)

    submitted = run_cli(["submit", str(job_dir)], service_env)  # queued; no worker runs yet
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    (job_dir / "vanishes.jpg").unlink()  # gone between submit and processing

    # As root, file permissions don't bind; drop the capabilities that bypass them so that
    # "unreadable" is unreadable for the worker too.
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else None
    worker = start_worker(service_env, concurrency=1, prefix=prefix)
    counter = JobCounter(db_url)
    deadline = time.monotonic() + 120
    while counter.exactly_once(job_id)[3] and time.monotonic() < deadline:
        time.sleep(0.2)
    images, rows, distinct, pending = counter.exactly_once(job_id)
    assert (rows, distinct, pending) == (images, images, 0) and images == len(expect)

    out = run_cli(["results", job_id, "--format", "json"], service_env)
    results = {Path(r["path"]).name: r for r in json.loads(out.stdout)}
    assert sorted(results) == sorted(expect), "every file with an image extension is recorded"
    for name, (status, detail) in expect.items():
        got = results[name]
        assert got["status"] == status, (name, got)
        if status == "ok" and detail is not None:
            assert got["class_index"] in detail, (name, got["label"])
        if status == "error":
            assert detail in got["error"], (name, got["error"])

    # Alive, and memory stayed bounded through the 30000 x 30000 bomb.
    pool = children(worker.proc.pid)
    assert worker.proc.poll() is None and pool
    peak = max(peak_rss_mb(pid) for pid in pool)
    print(f"peak RSS of the worker pool process through the bomb: {peak:.1f} MB")
    assert peak < 300
    again = run_cli(["submit", str(job_dir), "--new", "--wait"], service_env)
    assert again.returncode == 0, again.stderr
    counter.close()


def test_decode_refuses_the_bomb_in_process_without_allocating(tmp_path: Path) -> None:
    from imgbatch.core.preprocess import ImageDecodeError, PreprocessSpec, load_tensor

    _bomb_png(tmp_path / "bomb.png")
    before = peak_rss_mb(os.getpid())
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        load_tensor(tmp_path / "bomb.png", PreprocessSpec())
    assert peak_rss_mb(os.getpid()) - before < 50


HOSTILE = {
    "IMG [edited].jpg": "IMG [edited].jpg",  # printed as "IMG .jpg"
    "<img src=x onerror=alert(1)>.jpg": "<img src=x onerror=alert(1)>.jpg",
    "\x1b[31mred.jpg": "\\x1b[31mred.jpg",  # ESC shown escaped, never sent to the terminal
    "new\nline.jpg": "new\\nline.jpg",
}


def test_hostile_names_through_run_results_and_report(tmp_path: Path, model_path: Path) -> None:
    """Names are data: shown, never interpreted, stored losslessly. A name that is not UTF-8
    (x\\xe9.jpg as bytes) and a file literally named `x\\xe9.jpg` stay two images."""
    photos = tmp_path / "photos"
    photos.mkdir()
    data = _cat_bytes()
    for name in HOSTILE:
        (photos / name).write_bytes(data)
    (photos / "x[").mkdir()  # x[/b].jpg: Rich markup closing a tag never opened crashed `results`
    (photos / "x[" / "b].jpg").write_bytes(data)
    with open(os.path.join(os.fsencode(photos), b"x\xe9.jpg"), "wb") as handle:
        handle.write(data)
    (photos / "x\\xe9.jpg").write_bytes(data)  # a backslash, an x, an e and a 9
    (photos / "dangling.jpg").symlink_to(photos / "gone.jpg")
    os.mkfifo(photos / "fifo.jpg")
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))

    run = run_cli(["run", str(photos), "--workers", "1"], env)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "9 images, 7 ok, 2 errors" in " ".join(run.stdout.split()), run.stdout
    for shown_as in [*HOSTILE.values(), "x[/b].jpg"]:
        assert shown_as in run.stdout, (shown_as, run.stdout)
    assert "\x1b" not in run.stdout + run.stderr, "an ESC reached the terminal"

    table = run_cli(["results"], env)
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
    assert "x[/b].jpg" in table.stdout and "IMG [edited].jpg" in table.stdout and "\x1b" not in table.stdout
    rows = {Path(r["path"]).name: r for r in json.loads(run_cli(["results", "-f", "json"], env).stdout)}
    assert len(rows) == 9
    assert rows["x\\xe9.jpg"]["status"] == "ok" and rows["x\\\\xe9.jpg"]["status"] == "ok"
    assert rows["fifo.jpg"]["error"] == "not a regular file"
    assert rows["dangling.jpg"]["error"] == "broken symbolic link"

    report = run_cli(["report", "-o", str(tmp_path / "r.html")], env)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert (
        "\x1b" not in html and "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.jpg" in html
    )
    assert "\\x1b[31mred.jpg" in html and "x[/b].jpg" in html


def _cat_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    load_photo("cat").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _declared_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height, with a few bytes of pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _extreme_corpus(directory: Path) -> dict[str, str]:
    """Each format Pillow writes, at extreme dimensions (each format's own maximum where it has one),
    and the reason its row must give."""
    expect: dict[str, str] = {}
    sizes = {"png": 200_000, "gif": 65_535, "tiff": 200_000, "webp": 16_383, "jpg": 65_500, "bmp": 200_000}
    for ext, long in sizes.items():
        for width, height in ((long, 1), (1, long)):
            name = f"{width}x{height}.{ext}"
            Image.new("L" if ext != "webp" else "RGB", (width, height), 128).save(directory / name)
            expect[name] = "extreme aspect ratio"
    _declared_png(directory / "65535x65535-declared.png", 65_535, 65_535)
    expect["65535x65535-declared.png"] = "too many pixels"
    _declared_png(directory / "40000x2-declared.png", 40_000, 2)
    expect["40000x2-declared.png"] = "extreme aspect ratio"
    return expect


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_extreme_dimensions_cost_what_the_model_needs(tmp_path: Path, decode: str) -> None:
    """A W x 1 image used to be resized to (256*W) x 256 before the crop: seconds and gigabytes from a
    few hundred bytes. Each file of the corpus is refused from its header, on both decoders."""
    from imgbatch.core.preprocess import ImageDecodeError, PreprocessSpec, load_tensor

    expect = _extreme_corpus(tmp_path)
    before_rss = peak_rss_mb(os.getpid())
    for name, reason in expect.items():
        cpu = time.process_time()
        with pytest.raises(ImageDecodeError, match=reason):
            load_tensor(tmp_path / name, PreprocessSpec(), decode=decode)  # type: ignore[arg-type]
        spent = time.process_time() - cpu
        assert spent < 1.0, f"{name}: {spent:.2f} s of CPU"
    assert peak_rss_mb(os.getpid()) - before_rss < 300
