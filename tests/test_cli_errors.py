"""User mistakes and unavailable services: one readable line on stderr, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_one_line_error, imgbatch_env, run_cli
from imgbatch.producer.local_redis import free_port


def _onnx_without_metadata(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "plain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 224, 224])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def env(tmp_path: Path, redis_url: str, model_path: Path) -> dict[str, str]:
    return imgbatch_env(
        tmp_path,
        IMGBATCH_REDIS_URL=redis_url,
        IMGBATCH_MODEL=str(model_path),
        IMGBATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
    )


def test_missing_directory(env: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(run_cli(["submit", str(tmp_path / "nope")], env), "no such directory", "nope")
    assert_one_line_error(run_cli(["run", str(tmp_path / "nope")], env), "no such directory")


def test_empty_directory(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert_one_line_error(run_cli(["submit", str(tmp_path / "empty")], env), "no images found")


def test_unreachable_redis_hides_the_password(env: dict[str, str], photo_dir: Path) -> None:
    env["IMGBATCH_REDIS_URL"] = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    proc = run_cli(["submit", str(photo_dir)], env)
    assert_one_line_error(proc, "cannot reach Redis", "***")
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert_one_line_error(run_cli(["worker"], env), "cannot reach Redis")


def test_unreachable_database_hides_the_password(env: dict[str, str], photo_dir: Path) -> None:
    env["IMGBATCH_DATABASE_URL"] = f"postgresql://bob:s3cret-pw@127.0.0.1:{free_port()}/nowhere"
    proc = run_cli(["submit", str(photo_dir)], env)
    assert_one_line_error(proc, "cannot use database")
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert_one_line_error(run_cli(["status", "latest"], env), "database")


def test_missing_model(env: dict[str, str], photo_dir: Path, tmp_path: Path) -> None:
    env["IMGBATCH_MODEL"] = str(tmp_path / "missing.onnx")
    assert_one_line_error(run_cli(["submit", str(photo_dir)], env), "model file not found")
    assert_one_line_error(run_cli(["run", str(photo_dir)], env), "model file not found")
    assert_one_line_error(run_cli(["worker"], env), "model file not found")


def test_wrong_model_files(env: dict[str, str], photo_dir: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 100)
    assert_one_line_error(
        run_cli(["submit", str(photo_dir), "--model", str(garbage)], env), "cannot load model"
    )
    plain = _onnx_without_metadata(tmp_path / "plain.onnx")
    assert_one_line_error(
        run_cli(["submit", str(photo_dir), "--model", str(plain)], env),
        "not an imgbatch model",
        "imgbatch.labels",
    )


def test_unknown_job(env: dict[str, str]) -> None:
    assert_one_line_error(run_cli(["status", "latest"], env), "no jobs yet")
    assert_one_line_error(run_cli(["results", "deadbeef"], env), "no job 'deadbeef'")


def test_usage_errors_exit_nonzero_without_traceback(env: dict[str, str]) -> None:
    proc = run_cli(["submit", "--batch-size", "0", "/tmp"], env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_bench_refuses_a_wrong_fp32_twin_before_any_work(
    env: dict[str, str], tmp_path: Path, model_path: Path
) -> None:
    """A wrong --fp32-model is one line at once, not after minutes of bare loops and pipeline runs."""
    import json

    import onnx

    images = tmp_path / "bench-set"
    plain = _onnx_without_metadata(tmp_path / "plain.onnx")
    proc = run_cli(["bench", str(images), "--images", "8", "--fp32-model", str(plain)], env)
    assert_one_line_error(proc, "not an imgbatch model")
    relabelled = onnx.load(str(model_path))
    for prop in relabelled.metadata_props:
        if prop.key == "imgbatch.labels":
            prop.value = json.dumps([f"class {i}" for i in range(len(json.loads(prop.value)))])
    onnx.save(relabelled, str(tmp_path / "other.fp32.onnx"))
    proc = run_cli(
        ["bench", str(images), "--images", "8", "--fp32-model", str(tmp_path / "other.fp32.onnx")], env
    )
    assert_one_line_error(proc, "not an FP32 twin", "labels differ")
    assert not images.exists()  # refused before the benchmark set was written


def test_malformed_urls_are_one_line_each(env: dict[str, str], photo_dir: Path, tmp_path: Path) -> None:
    for url, needle in (
        ("postgresql://bob:pw@127.0.0.1:notaport/db", "the port must be a number"),
        ("mysql://bob@127.0.0.1/db", "unknown scheme"),
        ("garbage", "invalid database URL"),
        (f"sqlite:///{tmp_path}/missing/dir/x.db", "no such directory"),
    ):
        env["IMGBATCH_DATABASE_URL"] = url
        assert_one_line_error(run_cli(["status"], env), needle)
    assert not (tmp_path / "missing").exists()  # only the default data dir is ever created
    env["IMGBATCH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for url, needle in (
        ("redis://127.0.0.1:port/0", "the port must be a number"),
        ("http://127.0.0.1:6379", "the scheme must be"),
        ("nonsense", "invalid Redis URL"),
    ):
        env["IMGBATCH_REDIS_URL"] = url
        assert_one_line_error(run_cli(["submit", str(photo_dir)], env), needle)
    env["IMGBATCH_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0?password=query-s3cret"
    proc = run_cli(["submit", str(photo_dir)], env)
    assert_one_line_error(proc, "cannot reach Redis", "***")
    assert "query-s3cret" not in proc.stderr


def test_postgres_scheme_means_postgresql(env: dict[str, str]) -> None:
    from conftest import PG_ADMIN_URL, _postgres_reachable, fresh_postgres_database

    if not _postgres_reachable():
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed")
    with fresh_postgres_database() as url:
        env["IMGBATCH_DATABASE_URL"] = url.replace("postgresql://", "postgres://")
        proc = run_cli(["db", "upgrade"], env)
        assert proc.returncode == 0, proc.stderr


def test_a_model_that_breaks_the_contract_is_refused(
    env: dict[str, str], photo_dir: Path, tmp_path: Path, model_path: Path
) -> None:
    """Fewer labels than outputs is refused; a foreign graph with copied metadata gets its own hash."""
    import json

    import onnx

    short = onnx.load(str(model_path))
    for prop in short.metadata_props:
        if prop.key == "imgbatch.labels":
            prop.value = json.dumps(json.loads(prop.value)[:500])
    onnx.save(short, str(tmp_path / "short.onnx"))
    proc = run_cli(["submit", str(photo_dir), "--model", str(tmp_path / "short.onnx")], env)
    assert_one_line_error(proc, "1000 outputs but 500 labels")

    from imgbatch.core.modelfile import read_model_info

    foreign = onnx.load(str(model_path))
    foreign.graph.name = "not the exported graph"  # any other graph, the real model's metadata copied
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    real, copy = read_model_info(model_path), read_model_info(tmp_path / "foreign.onnx")
    assert real.graph_sha256 == copy.graph_sha256  # what the metadata claims is the same...
    assert real.sha256 != copy.sha256  # ...what the file is, is not


def test_submit_wait_says_once_when_no_worker_is_alive(env: dict[str, str], photo_dir: Path) -> None:
    """No worker on the queue: `submit --wait` says so on stderr, once, naming IMGBATCH_REDIS_URL."""
    import subprocess
    import sys
    import time

    env = {**env, "IMGBATCH_QUEUE_NAME": "nobody-listens", "IMGBATCH_HEARTBEAT_TTL_S": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgbatch", "submit", str(photo_dir), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(25)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    told = [line for line in err.splitlines() if "no imgbatch worker has been alive" in line]
    assert len(told) == 1 and "IMGBATCH_REDIS_URL=" in told[0], err
