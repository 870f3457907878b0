"""The two runtimes: OpenVINO agrees with onnxruntime (the reference) on real photos; the choice between
them (explicit, auto, fallback when OpenVINO cannot be imported); result rows record the runtime."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, imgbatch_env, run_cli
from imgbatch.core.errors import ModelFileError
from imgbatch.core.modelfile import read_model_bytes
from imgbatch.core.preprocess import load_reference_tensor
from imgbatch.core.runtime_choice import CACHE_NAME, MIN_GAIN, choice_key, open_runtime, write_cache
from imgbatch.core.runtimes import (
    open_onnxruntime,
    open_openvino,
    openvino_version,
)

# A sys.meta_path finder that makes `import openvino` fail, as on a machine without the wheel.
BLOCK_OPENVINO = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openvino":
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
"""


def _key(model_path: Path) -> str:
    """The cache key of the model's measured choice on this machine, one thread."""
    return choice_key(hashlib.sha256(read_model_bytes(model_path)).hexdigest(), 1, openvino_version() or "")


def _photo_batch(photo_dir: Path, model_path: Path) -> np.ndarray:
    spec = open_onnxruntime(model_path).info.preprocess
    return np.stack([load_reference_tensor(p, spec) for p in sorted(photo_dir.glob("*.jpg"))])


def test_openvino_agrees_with_onnxruntime_on_the_sample_photos(model_path: Path, photo_dir: Path) -> None:
    x = _photo_batch(photo_dir, model_path)
    reference, openvino = open_onnxruntime(model_path), open_openvino(model_path)
    assert (reference.name, openvino.name) == ("onnxruntime", "openvino")
    assert openvino.info.sha256 == reference.info.sha256 and openvino.info.labels == reference.info.labels
    # Batches of 8 and a ragged last one, as workers run them (the model's batch is dynamic).
    ort = np.concatenate([reference.run(x[i : i + 8]) for i in range(0, len(x), 8)])
    ov = np.concatenate([openvino.run(x[i : i + 8]) for i in range(0, len(x), 8)])
    assert ov.shape == ort.shape == (len(x), len(reference.info.labels))
    # Both run the same INT8 graph; their kernels round differently (measured max |diff| 0.12-0.33
    # logit per photo), so a photo whose best two classes are closer than that may flip (one of the
    # eight here: 0.11 apart). Where onnxruntime's winner leads by more than 0.5, OpenVINO agrees.
    assert np.abs(ov - ort).max() < 0.6
    top2 = np.sort(ort, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.5
    assert clear.sum() >= 3
    assert np.array_equal(ov.argmax(1)[clear], ort.argmax(1)[clear])


def test_openvino_compiled_once_then_imported(model_path: Path, photo_dir: Path, tmp_path: Path) -> None:
    """The compiled model kept in the data dir gives the same outputs and contract as a fresh compile."""
    x = _photo_batch(photo_dir, model_path)[:5]
    fresh = open_openvino(model_path, 1, cache_dir=tmp_path)
    [blob] = (tmp_path / "openvino").glob("*.blob")
    cached = open_openvino(model_path, 1, cache_dir=tmp_path)
    assert cached.info == fresh.info
    np.testing.assert_allclose(cached.run(x), fresh.run(x), rtol=0, atol=1e-5)
    blob.write_bytes(b"truncated")  # a damaged cache is compiled again, and rewritten
    again = open_openvino(model_path, 1, cache_dir=tmp_path)
    np.testing.assert_allclose(again.run(x), fresh.run(x), rtol=0, atol=1e-5)
    assert blob.stat().st_size > 1000


def test_explicit_runtimes_and_a_broken_model(model_path: Path, tmp_path: Path) -> None:
    assert open_runtime(model_path, 1, "onnxruntime").name == "onnxruntime"
    assert open_runtime(model_path, 1, "openvino").name == "openvino"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="cannot load model"):
        open_openvino(bad)


def test_auto_follows_the_measured_choice(model_path: Path, tmp_path: Path) -> None:
    """``auto`` takes what the cache says was measured for (model, CPU, threads, versions); on a cache
    miss it measures once and records it."""
    assert openvino_version() is not None
    key = _key(model_path)
    for ort_ms, ov_ms, expected in ((10.0, 5.0, "openvino"), (10.0, 20.0, "onnxruntime")):
        cache = tmp_path / expected
        cache.mkdir()
        write_cache(cache, key, {"onnxruntime_ms": ort_ms, "openvino_ms": ov_ms, "saturation_safe": 1.0})
        assert open_runtime(model_path, 1, "auto", cache).name == expected
    fresh = tmp_path / "fresh"
    picked = open_runtime(model_path, 1, "auto", fresh).name
    measured = json.loads((fresh / CACHE_NAME).read_text())[key]
    assert measured["onnxruntime_ms"] > 0 and measured["openvino_ms"] > 0
    faster = measured["openvino_ms"] * MIN_GAIN < measured["onnxruntime_ms"]
    assert picked == ("openvino" if faster else "onnxruntime")


def test_auto_falls_back_to_onnxruntime_without_openvino(model_path: Path, tmp_path: Path) -> None:
    """OpenVINO cannot be imported: ``auto`` says so in a log line and runs onnxruntime, even where the
    cache says OpenVINO was faster; an explicit ``openvino`` is an error."""
    figures = {"onnxruntime_ms": 10.0, "openvino_ms": 1.0, "saturation_safe": 1.0}
    write_cache(tmp_path, _key(model_path), figures)
    code = BLOCK_OPENVINO + (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from pathlib import Path\n"
        "from imgbatch.core.errors import ModelFileError\n"
        "from imgbatch.core.runtime_choice import open_runtime\n"
        "from imgbatch.core.runtimes import require_runtime\n"
        f"print(open_runtime(Path({str(model_path)!r}), 1, 'auto', Path({str(tmp_path)!r})).name)\n"
        "try:\n"
        f"    open_runtime(Path({str(model_path)!r}), 1, 'openvino')\n"
        "except ModelFileError as exc:\n"
        "    print('error:', exc)\n"
        "try:\n"  # what `imgbatch run/worker --runtime openvino` check before starting anything
        "    require_runtime('openvino')\n"
        "except ModelFileError as exc:\n"
        "    print('error:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "onnxruntime"
    assert out[1].startswith("error: runtime openvino is not available")
    assert out[2].startswith("error: runtime openvino is not available")
    assert "runtime auto: onnxruntime" in proc.stderr and "blocked" in proc.stderr


def test_unknown_runtime_is_one_line(tmp_path: Path, model_path: Path, photo_dir: Path) -> None:
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    assert_one_line_error(run_cli(["run", str(photo_dir), "--runtime", "tensorrt"], env), "unknown runtime")


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_run_records_the_runtime_of_each_row(
    runtime: str, tmp_path: Path, model_path: Path, photo_dir: Path
) -> None:
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    proc = run_cli(["run", str(photo_dir), "--workers", "1", "--runtime", runtime], env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(run_cli(["results", "--format", "json"], env).stdout)
    assert rows and {row["runtime"] for row in rows} == {runtime}
    assert all(row["status"] == "ok" for row in rows)
    csv_header = run_cli(["results", "--format", "csv"], env).stdout.splitlines()[0]
    assert "runtime" in csv_header.split(",")
