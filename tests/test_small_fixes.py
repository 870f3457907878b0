"""Small CLI fixes: counts agree in number, `run` errors have no empty line before them, help examples."""

from __future__ import annotations

from pathlib import Path

from test_querying import _fill

from conftest import assert_one_line_error, imgbatch_env, run_cli


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'one.db'}"
    _fill(db_url, "job_one", 1)
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=db_url)
    status = run_cli(["stats", "job_one"], env)
    assert status.returncode == 0, status.stderr
    assert "1 image," in status.stdout and "1 images" not in status.stdout, status.stdout
    deleted = run_cli(["delete", "job_one"], env)
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted job job_one and its 1 image" in deleted.stderr and "1 images" not in deleted.stderr


def test_run_error_has_no_empty_line_before_it(tmp_path: Path, model_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    proc = run_cli(["run", str(tmp_path / "empty")], env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("imgbatch: error: no images found"), repr(proc.stderr)


def test_help_examples_each_on_their_own_line(tmp_path: Path) -> None:
    env = imgbatch_env(tmp_path)
    results = run_cli(["results", "-h"], env).stdout
    lines = [ln.strip() for ln in results.splitlines()]
    assert 'Example: imgbatch results latest --label "tiger cat" --format csv' in lines, results
    assert "Example: imgbatch results latest -o s3://bucket/results/latest.parquet" in lines, results
    top = run_cli(["-h"], env).stdout
    assert "Example: imgbatch run ~/photos" in top, top
    db = run_cli(["db", "-h"], env).stdout
    assert "Example: imgbatch db upgrade" in db, db


def test_model_path_that_is_a_directory_is_named_so(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.jpg").write_bytes(b"not really")
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(tmp_path))
    assert_one_line_error(run_cli(["run", str(photos)], env), "is a directory")


def test_output_symlink_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "real.csv").write_text("")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    env = imgbatch_env(tmp_path, IMGBATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    proc = run_cli(["results", "latest", "-o", str(tmp_path / "link.csv")], env)
    assert_one_line_error(proc, "is a symlink")
    assert (tmp_path / "real.csv").read_text() == ""
