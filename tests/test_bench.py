"""`imgbatch bench` on a small set: it runs, its figures are well-formed, and every image of every bench
job has exactly one result row. No test asserts a time."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np

from conftest import imgbatch_env, run_cli

STAGES = {"queue", "decode", "infer", "persist"}


def _positive(value: object) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_bench_small_set_is_well_formed(tmp_path: Path, model_path: Path) -> None:
    images = tmp_path / "bench-images"
    work = tmp_path / "work"
    # The INT8 model doubles as the "FP32" one: the comparison's code path runs, the ratio is ~1.
    proc = run_cli(
        [
            "bench", str(images), "--images", "40", "--workers", "1", "--batch-sizes", "8",
            "--model", str(model_path), "--fp32-model", str(model_path), "--work-dir", str(work), "--json",
            "--ray", "--decodes", "exact,fast", "--runtimes", "onnxruntime,openvino",
        ],
        imgbatch_env(tmp_path),
        timeout=420,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)

    assert result["image_set"]["images"] == 40 and len(list(images.iterdir())) == 40
    for mode in ("model", "pillow", "exact", "fast"):
        bare = result["bare"][mode]
        assert bare["images"] + bare["errors"] == 40 and _positive(bare["images_per_s"]), bare
    # The decoder and the runtime are dimensions of the grid: every decoder on the first runtime, the
    # first decoder on the other.
    runs = result["pipeline"]
    assert [(r["label"], r["workers"], r["batch_size"], r["runtime"], r["decode"]) for r in runs] == [
        ("int8", 1, 8, "onnxruntime", "exact"), ("int8", 1, 8, "onnxruntime", "fast"),
        ("int8", 1, 8, "openvino", "exact"),
    ]  # fmt: skip
    run = runs[0]
    for other in runs[1:]:
        assert other["images"] == other["results"] == 40 and other["pending"] == 0
    assert set(result["runtime_ratios"]) == {"onnxruntime", "openvino"}
    for figures in result["runtime_ratios"].values():
        assert _positive(figures["pipeline_vs_bare_pillow"]) and _positive(figures["vs_primary_runtime"])
    assert run["images"] == run["results"] == 40 and run["pending"] == 0
    assert _positive(run["images_per_s"]) and _positive(run["seconds"])
    assert set(run["stages"]) == STAGES
    for stage in STAGES:
        q = run["stages"][stage]
        assert 0 <= q["p50"] <= q["p95"] <= q["p99"], (stage, q)
        assert math.isfinite(q["mean"]) and q["mean"] >= 0, (stage, q)
    assert len(run["peak_rss_mb"]) == 1 and _positive(run["peak_rss_mb"][0])
    assert result["fp32"]["results"] == 40

    ratios = result["ratios"]
    # Ray Data ran the same 40 files through the workers' Classifier: every one came back, the
    # decodable ones with a label (as many as the bare loop decoded).
    ray = result["bare"]["ray"]
    assert ray["images"] == 40 and ray["classified"] == result["bare"]["exact"]["images"], ray
    assert _positive(ray["images_per_s"]) and _positive(ray["images_per_s_with_startup"])
    names = (
        "pipeline_vs_bare_pillow", "pipeline_vs_bare_own_decode", "int8_vs_fp32", "pipeline_vs_ray",
        "int8_vs_fp32_inference", "int8_vs_fp32_ceiling",
    )  # fmt: skip
    for name in (*names, "peak_rss_mb_batch8"):
        assert _positive(ratios[name]), (name, ratios[name])
    assert ratios["scaling"] is None  # one worker count: no scaling line
    assert set(result["targets"]) >= {"pipeline_vs_bare_pillow", "int8_vs_fp32", "scaling"}
    assert result["one_result_per_image"] is True
    from imgbatch.bench.report import render

    rendered = render(result)  # the text form of the same figures explains the INT8 / FP32 line
    assert "of which: inference alone" in rendered and "at most, as both decode the same files" in rendered
    for decode in ("exact", "fast"):
        assert all(_positive(v) for v in result["decode_ratios"][decode].values()), result["decode_ratios"]
        assert f"pipeline, decode {decode}: / Pillow+onnxruntime loop" in rendered
    assert "pipeline on openvino / bare loop with Pillow decode + onnxruntime" in rendered
    parity = result["decoder_parity"]
    assert 0 < parity["decoders"]["exact"]["identical"] <= parity["images"], parity  # large ones: DCT-scaled
    assert 0 <= parity["decoders"]["fast"]["top1_agreement"] <= 1

    # Straight from the database the bench kept: one result row per image, for every job.
    db = Path(result["config"]["database"].removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT i.job_id, count(i.id), count(r.id), count(DISTINCT r.image_id) "
            "FROM images i LEFT JOIN results r ON r.image_id = i.id GROUP BY i.job_id"
        ).fetchall()
    assert (
        len(rows) == 8
    )  # warm-up + measured job: INT8 exact and fast on onnxruntime, exact on OpenVINO, FP32
    for _job, n_images, n_results, distinct in rows:
        assert n_images == n_results == distinct

    # The text form prints the ratio lines and the table.
    text = run_cli(
        ["bench", str(images), "--images", "40", "--workers", "1", "--batch-sizes", "8",
         "--model", str(model_path), "--no-fp32"],
        imgbatch_env(tmp_path),
        timeout=240,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "pipeline / bare loop with Pillow decode" in text.stdout
    assert "inference alone" not in text.stdout  # --no-fp32: nothing to explain the INT8 / FP32 line with
    assert "peak RSS MB/worker" in text.stdout


def test_classifier_runs_big_messages_in_small_inference_batches(model_path: Path, photo_dir: Path) -> None:
    """A task message may carry more paths than one onnxruntime call takes; results keep their order."""
    from imgbatch.worker.classify import Classifier

    paths = [str(p) for p in sorted(photo_dir.glob("*.jpg"))]
    missing = str(photo_dir / "gone.jpg")
    batch = [paths[0], missing, *paths[1:]]
    whole = Classifier.load(model_path, 1)
    chunked = Classifier(whole.runner, infer_batch=3)
    a, b = whole.classify(batch), chunked.classify(batch)
    assert [p.path for p in b] == batch
    assert b[1].error == "file not found" and b[1].top is None
    for x, y in zip(a, b, strict=True):
        assert (x.top is None) == (y.top is None)
        if x.top and y.top:
            assert x.top[0][0] == y.top[0][0] and abs(x.top[0][2] - y.top[0][2]) < 1e-4


def test_fp32_twin_has_the_int8_models_contract_and_classifies(
    model_path: Path, photo_dir: Path, tmp_path: Path
) -> None:
    """The FP32 model bench compares against is exported from the same checkpoint and carries the INT8
    model's labels and preprocessing; it classifies the photos alike: the coffee the same, the cat as a
    cat (FP32 itself splits it between Egyptian cat and tiger cat, 0.37 / 0.35, so INT8 may pick either)."""
    from imgbatch.bench.models import ensure_fp32_model
    from imgbatch.core.modelfile import open_session
    from imgbatch.core.preprocess import load_tensor
    from imgbatch.core.samples import EXPECTED_CLASSES

    twin = ensure_fp32_model(model_path, tmp_path / "twin.fp32.onnx")
    fp32, fp32_info = open_session(twin)
    int8, int8_info = open_session(model_path)
    assert fp32_info.quantization == "none" and fp32_info.labels == int8_info.labels
    assert fp32_info.preprocess == int8_info.preprocess
    x = np.stack([load_tensor(photo_dir / name, fp32_info.preprocess) for name in ("cat.jpg", "coffee.jpg")])
    top_fp32 = fp32.run(None, {"input": x})[0].argmax(1)
    top_int8 = int8.run(None, {"input": x})[0].argmax(1)
    assert top_fp32[1] == top_int8[1]
    for top in (top_fp32, top_int8):
        assert top[0] in EXPECTED_CLASSES["cat"] and top[1] in EXPECTED_CLASSES["coffee"], top
