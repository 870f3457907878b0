"""`imgbatch export`: the command. Heavy imports (torch, onnx) happen inside it, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from imgbatch.cli.console import settings
from imgbatch.core.errors import UserError

console = Console()
_started = 0.0


def export_command(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write the model (default: IMGBATCH_MODEL or the data dir)."
        ),
    ] = None,
    arch: Annotated[
        str, typer.Option(help="Architecture: efficientnet_lite0 (bundled weights) or resnet50.")
    ] = "efficientnet_lite0",
    weights: Annotated[
        Path | None, typer.Option(help="state_dict checkpoint for --arch (torchvision keys for resnet50).")
    ] = None,
    torchscript: Annotated[Path | None, typer.Option(help="A TorchScript model file instead.")] = None,
    pt2: Annotated[
        Path | None, typer.Option("--pt2", help="A torch.export program (.pt2) instead; dynamic batch.")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Quantization preset (default: the architecture's; static-int8-gptq-fp32-first-block, "
            "static-int8-gptq, static-int8-percentile-bias-corrected, static-int8-per-channel, "
            "static-int8-bias-corrected, static-int8-fp32-ends, dynamic-int8, fp32)."
        ),
    ] = None,
    keep_fp32: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-fp32", help="Leave this node in FP32 (node name, first-conv, classifier, or first:N)."
        ),
    ] = None,
    calib: Annotated[Path | None, typer.Option(help="Directory of calibration images.")] = None,
    calib_count: Annotated[int, typer.Option(min=1, help="Generated calibration photos (no --calib).")] = 100,
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval", help="Directory of evaluation images (class subfolders = labels)."),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="CSV filename,class_index for the --eval images.")
    ] = None,
    eval_count: Annotated[
        int, typer.Option(min=1, help="Generated natural evaluation photos (no --eval).")
    ] = 1000,
    min_agreement: Annotated[
        float | None,
        typer.Option(help="Gate: minimum INT8 top-1 agreement with FP32 (0.95; 0.985 with --auto)."),
    ] = None,
    max_top1_drop: Annotated[float, typer.Option(help="Gate: maximum top-1 accuracy drop (labels).")] = 0.01,
    min_speedup: Annotated[
        float, typer.Option(help="Gate: minimum INT8/FP32 ONNX images/s, batch 8, one thread.")
    ] = 1.2,
    no_gate: Annotated[
        bool, typer.Option("--no-gate", help="Write the model even if the gate fails.")
    ] = False,
    auto: Annotated[
        bool, typer.Option("--auto", help="Search the fastest recipe that passes the gate.")
    ] = False,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing if the output exists.")
    ] = False,
) -> None:
    """Convert a PyTorch model to a validated, gated INT8 ONNX model and print its deployment report."""
    import time

    global _started
    _started = time.time()
    target = output or settings().model_path
    if if_missing and target.is_file():
        console.print(f"model already built: {target}")
        return
    try:
        from export.build import ExportOptions, default_config, export_model
        from export.quantize import get_preset
        from export.report import Thresholds
    except ImportError as exc:
        raise UserError(
            f"export needs the export extra (torch, onnx): pip install 'imgbatch[export]' ({exc})"
        ) from exc
    for name, value in (("--min-agreement", min_agreement), ("--max-top1-drop", max_top1_drop)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be a fraction between 0 and 1, got {value}")
    thresholds = Thresholds(
        min_agreement=min_agreement
        if min_agreement is not None
        else (0.985 if auto else Thresholds().min_agreement),
        max_top1_drop=max_top1_drop,
        min_speedup=min_speedup,
    )
    options = ExportOptions(
        arch=arch,
        weights=weights,
        torchscript=torchscript,
        exported=pt2,
        calib_dir=calib,
        eval_dir=eval_dir,
        labels_csv=labels,
        eval_count=eval_count,
        thresholds=thresholds,
        gate=not no_gate,
        auto=auto,
    )
    # No --preset: the one of the architecture (export.sources.Arch.preset).
    config = get_preset(preset) if preset else default_config(options)
    config = config.replace(calib_count=calib_count)
    if keep_fp32:
        config = config.keeping_fp32(keep_fp32)
    try:
        result = export_model(target, config, options)
    finally:
        # The report is printed whether the gate passed or not: it says what failed.
        from export.build import report_paths

        md_path = report_paths(target.expanduser().absolute())[0]
        if md_path.is_file() and md_path.stat().st_mtime >= _started:
            print(md_path.read_text())
    console.print(f"model written: {result.path}")
