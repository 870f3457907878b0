"""`imgbatch export` end to end on a small model, the gate, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime.quantization")

from imgbatch.core.modelfile import open_session  # noqa: E402
from imgbatch.core.samples import make_variants  # noqa: E402
from imgbatch.export.resnet import ResNet50  # noqa: E402

FAST = ["--calib-count", "8", "--eval-count", "8"]


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 1000),
    ).eval()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    model = _tiny()
    script = d / "tiny.ts"
    torch.jit.script(model).save(str(script))
    x = (torch.zeros(2, 3, 224, 224),)
    program = torch.export.export(model, x, dynamic_shapes=({0: torch.export.Dim("batch")},))
    pt2 = d / "tiny.pt2"
    torch.export.save(program, str(pt2))
    static = d / "static.pt2"
    torch.export.save(torch.export.export(model, x), str(static))
    return {"ts": script, "pt2": pt2, "static": static}


def run_export(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMGBATCH_DATA_DIR": str(cwd / "data")}
    return subprocess.run(
        [sys.executable, "-m", "imgbatch", "export", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("imgbatch: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_torchscript_end_to_end(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    out = tmp_path / "out" / "tiny.int8.onnx"
    result = run_export(
        "--torchscript",
        tiny_files["ts"],
        "-o",
        out,
        *FAST,
        "--min-agreement",
        "0",
        "--min-speedup",
        "0",
        "--runtime",
        "openvino",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ONNX INT8 |" in result.stdout and "Gate: PASSED" in result.stdout
    assert "Applied to the runtime workers will use: openvino" in result.stdout
    assert "histogram" not in result.stdout  # ORT's calibration progress prints stay out of the report
    session, info = open_session(out)
    assert info.extra["imgbatch.source_sha256"]
    versions = json.loads(info.extra["imgbatch.build_versions"])
    assert set(versions) == {"torch", "onnx", "onnxruntime"}
    assert json.loads(info.quantization)["bias_correction"] is True
    assert json.loads((out.parent / "tiny.int8.quant.json").read_text()) == json.loads(info.quantization)
    report = json.loads((out.parent / "tiny.int8.report.json").read_text())
    # Both runtimes measured: the ONNX models on onnxruntime and on OpenVINO; the gate on OpenVINO's.
    assert [r["name"] for r in report["rows"]] == [
        "PyTorch eager FP32", "ONNX FP32", "ONNX INT8", "ONNX FP32 on OpenVINO", "ONNX INT8 on OpenVINO",
    ]  # fmt: skip
    for int8 in (report["rows"][2], report["rows"][4]):
        assert {(lat["batch"], lat["threads"]) for lat in int8["latency"]} >= {(1, 1), (8, 1)}
        assert 0.0 <= int8["top1_agreement"] <= 1.0
    assert report["gate"]["runtime"].startswith("openvino")
    assert (out.parent / "tiny.int8.report.md").read_text().startswith("# Export report")
    # Dynamic batch axis: batch 3 runs.
    assert session.run(None, {"input": torch.zeros(3, 3, 224, 224).numpy()})[0].shape == (3, 1000)


def test_auto_searches_on_top_of_the_recipe(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    """--auto scans every layer the recipe quantizes, keeps the recipe's own FP32 nodes in every
    candidate, ships the chosen candidate, and says what it chose."""
    out = tmp_path / "tiny.int8.onnx"
    result = run_export(
        "--torchscript", tiny_files["ts"], "-o", out, *FAST, "--auto", "--keep-fp32", "first-conv",
        "--min-agreement", "0", "--min-speedup", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--auto: as given:" in result.stdout
    report = json.loads(out.with_suffix(".report.json").read_text())
    auto = report["auto"]
    scanned = {item["node"] for item in auto["sensitivity"]}
    assert len(scanned) == 2  # the second conv and the classifier; the kept first conv is not scanned
    assert all("first-conv" in cand["keep_fp32"] for cand in auto["candidates"]), auto["candidates"]
    quant = json.loads(open_session(out)[1].quantization)
    assert quant["name"].endswith("+auto") and "first-conv" in quant["keep_fp32"]
    assert auto["chosen"].split(" (")[0] in {cand["name"] for cand in auto["candidates"]}
    # The search ranked candidates on its own photos: 8 other variants, not the 8 evaluation photos.
    assert auto["search_photos"] == "8 other variants of the natural photos, not the evaluation photos"
    assert "on the search photos" in result.stdout

    # With the user's calibration images, the search ranks on those (their domain, unseen by the gate).
    calib = tmp_path / "calib"
    make_variants(calib, 6, seed=3)
    result = run_export(
        "--torchscript", tiny_files["ts"], "-o", out, *FAST, "--auto", "--calib", calib,
        "--min-agreement", "0", "--min-speedup", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    auto = json.loads(out.with_suffix(".report.json").read_text())["auto"]
    assert auto["search_photos"] == f"6 calibration images from {calib}, not the evaluation photos"


def test_pt2_with_labels_and_fp32_preset(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    evald = tmp_path / "eval"
    make_variants(evald / "281", 3, seed=5, names=["cat"])
    make_variants(evald / "espresso", 3, seed=6, names=["coffee"])
    out = tmp_path / "tiny.onnx"
    result = run_export(
        "--pt2", tiny_files["pt2"], "-o", out, "--preset", "fp32", "--eval", evald, *FAST[:2], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["PyTorch eager FP32", "ONNX FP32", "ONNX FP32 on OpenVINO"]
    assert report["rows"][1]["top1_accuracy"] is not None
    assert json.loads(open_session(out)[1].quantization)["mode"] == "fp32"


def test_gate_refuses_and_writes_nothing(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    out = tmp_path / "tiny.int8.onnx"
    out.write_bytes(b"previous model")
    result = run_export(
        "--torchscript", tiny_files["ts"], "-o", out, *FAST, "--min-speedup", "1000", cwd=tmp_path
    )
    line = assert_user_error(result, "gate refused", "speed-up over FP32 ONNX")
    assert "min 1000.00x" in line
    assert "Gate: REFUSED" in result.stdout
    assert out.read_bytes() == b"previous model"
    assert not any(p.name.startswith(".tiny") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "case",
    ["missing", "corrupt", "unknown-arch", "mismatch", "empty-calib", "labels", "unwritable", "static-pt2"],
)
def test_bad_input_one_line(tmp_path: Path, case: str, tiny_files: dict[str, Path]) -> None:
    out = tmp_path / "out" / "m.onnx"
    args: list[str | Path]
    needles: tuple[str, ...]
    if case == "missing":
        args, needles = ["--arch", "resnet50", "--weights", tmp_path / "nope.pth"], ("checkpoint not found",)
    elif case == "corrupt":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"\x80\x02 not a checkpoint at all")
        args, needles = ["--arch", "resnet50", "--weights", bad], ("cannot read checkpoint",)
    elif case == "unknown-arch":
        args, needles = ["--arch", "vgg16"], ("unknown architecture 'vgg16'",)
    elif case == "mismatch":
        state = ResNet50().state_dict()
        state["fc.weight"] = torch.zeros(10, 2048)
        state["fc.bias"] = torch.zeros(10)
        del state["layer4.2.bn3.running_var"]
        ckpt = tmp_path / "r50.pth"
        torch.save(state, ckpt)
        args = ["--arch", "resnet50", "--weights", ckpt]
        needles = (
            "does not fit --arch resnet50",
            "layer4.2.bn3.running_var",
            "fc.weight (10, 2048) vs (1000, 2048)",
        )
    elif case == "empty-calib":
        (tmp_path / "calib").mkdir()
        args, needles = ["--calib", tmp_path / "calib"], ("calibration directory", "has no images")
    elif case == "labels":
        evald = tmp_path / "eval"
        make_variants(evald, 2, seed=3, names=["cat"])
        csv = tmp_path / "labels.csv"
        csv.write_text("filename,class_index\nnot_there.jpg,281\n")
        args, needles = ["--eval", evald, "--labels", csv], ("no image 'not_there.jpg'",)
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "m.onnx"
        args, needles = [], ("cannot create output directory",)
    else:
        args, needles = ["--pt2", tiny_files["static"], *FAST], ("fixed batch size",)
    result = run_export(*args, "-o", out, cwd=tmp_path)
    assert_user_error(result, *needles)
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.suffix == ".onnx" or p.name.startswith(".m.onnx")]
