"""`imgbatch export`: the command. Heavy imports (torch, onnx) happen inside it, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from imgbatch.cli.console import settings
from imgbatch.cli.params import RuntimeOpt
from imgbatch.core.errors import UserError

if TYPE_CHECKING:
    from imgbatch.export.build import ExportOptions
    from imgbatch.export.quantize import QuantConfig
    from imgbatch.export.report import Thresholds

console = Console()

OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="PATH",
        help="Where to write the model (default: IMGBATCH_MODEL or the data dir).",
    ),
]
ArchOpt = Annotated[
    str,
    typer.Option(metavar="NAME", help="Architecture: efficientnet_lite0 (bundled weights) or resnet50."),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="state_dict checkpoint for --arch (torchvision keys for resnet50)."),
]
TorchscriptOpt = Annotated[
    Path | None, typer.Option(metavar="FILE", help="A TorchScript model file instead.")
]
Pt2Opt = Annotated[
    Path | None,
    typer.Option("--pt2", metavar="FILE", help="A torch.export program (.pt2) instead; dynamic batch."),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Quantization preset (default: the architecture's; static-int8-gptq-fp32-first-block, "
        "static-int8-gptq, static-int8-percentile-bias-corrected, static-int8-per-channel, "
        "static-int8-bias-corrected, static-int8-fp32-ends, dynamic-int8, fp32).",
    ),
]
KeepFp32Opt = Annotated[
    list[str] | None,
    typer.Option(
        "--keep-fp32",
        metavar="NODE",
        help="Leave this node in FP32 (node name, first-conv, classifier, or first:N).",
    ),
]
CalibOpt = Annotated[Path | None, typer.Option(metavar="DIR", help="Directory of calibration images.")]
CalibCountOpt = Annotated[
    int, typer.Option(metavar="N", min=1, help="Generated calibration photos (no --calib).")
]
EvalOpt = Annotated[
    Path | None,
    typer.Option("--eval", metavar="DIR", help="Directory of evaluation images (class subfolders = labels)."),
]
LabelsOpt = Annotated[
    Path | None, typer.Option(metavar="FILE", help="CSV filename,class_index for the --eval images.")
]
EvalCountOpt = Annotated[
    int, typer.Option(metavar="N", min=1, help="Generated natural evaluation photos (no --eval).")
]
MinAgreementOpt = Annotated[
    float | None,
    typer.Option(
        metavar="FRACTION",
        help="Gate: minimum INT8 top-1 agreement with FP32 (0.95; 0.985 with --auto).",
    ),
]
MaxTop1DropOpt = Annotated[
    float, typer.Option(metavar="FRACTION", help="Gate: maximum top-1 accuracy drop (labels).")
]
MinSpeedupOpt = Annotated[
    float,
    typer.Option(metavar="RATIO", help="Gate: minimum INT8/FP32 ONNX images/s, batch 8, one thread."),
]
NoGateFlag = Annotated[
    bool, typer.Option("--no-gate", metavar="", help="Write the model even if the gate fails.")
]
AutoFlag = Annotated[
    bool, typer.Option("--auto", metavar="", help="Search the fastest recipe that passes the gate.")
]
IfMissingFlag = Annotated[
    bool, typer.Option("--if-missing", metavar="", help="Do nothing if the output exists.")
]


def _runtime(runtime: str | None) -> str:
    from imgbatch.core.runtimes import require_runtime

    chosen = runtime or settings().runtime
    require_runtime(chosen)
    return chosen


def export_command(
    output: OutputOpt = None,
    arch: ArchOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    torchscript: TorchscriptOpt = None,
    pt2: Pt2Opt = None,
    preset: PresetOpt = None,
    keep_fp32: KeepFp32Opt = None,
    calib: CalibOpt = None,
    calib_count: CalibCountOpt = 100,
    eval_dir: EvalOpt = None,
    labels: LabelsOpt = None,
    eval_count: EvalCountOpt = 1000,
    min_agreement: MinAgreementOpt = None,
    max_top1_drop: MaxTop1DropOpt = 0.01,
    min_speedup: MinSpeedupOpt = 1.2,
    no_gate: NoGateFlag = False,
    auto: AutoFlag = False,
    if_missing: IfMissingFlag = False,
    runtime: RuntimeOpt = None,
) -> None:
    """Convert a PyTorch model to a gated INT8 ONNX model.

    Exports the checkpoint (by default the bundled EfficientNet-Lite0) to FP32 ONNX and checks it against
    PyTorch, quantizes it (--auto: searches the fastest recipe that passes the gate), measures size, speed
    and accuracy of each version on the evaluation photos, and installs the model only if INT8 passes the
    gate on the runtime workers will use (--runtime; auto: the one they would pick here). The ONNX
    models are measured on onnxruntime and, where it is installed, OpenVINO. The report is printed,
    and written beside the model (<stem>.report.md and .report.json), whether the gate passed or not.

    Example: imgbatch export -o model.onnx --eval DIR --labels labels.csv
    """
    target = output or settings().model_path
    if if_missing and target.is_file():
        console.print(f"model already built: {target}")
        return
    try:
        from imgbatch.export.build import ExportOptions, export_model
        from imgbatch.export.export_report import ReportedFailure
    except ImportError as exc:
        raise UserError(
            f"export needs the export extra (torch, onnx): pip install 'imgbatch[export]' ({exc})"
        ) from exc
    options = ExportOptions(
        arch=arch,
        weights=weights,
        torchscript=torchscript,
        exported=pt2,
        calib_dir=calib,
        eval_dir=eval_dir,
        labels_csv=labels,
        eval_count=eval_count,
        thresholds=_thresholds(min_agreement, max_top1_drop, min_speedup, auto),
        gate=not no_gate,
        auto=auto,
        runtime=_runtime(runtime),
    )
    try:
        result = export_model(target, _recipe(preset, keep_fp32, calib_count, options), options)
    except ReportedFailure as exc:
        print(exc.report_text)  # it says what failed
        raise
    print(result.report.markdown())
    console.print(f"model written: {result.path}")


def _thresholds(
    min_agreement: float | None, max_top1_drop: float, min_speedup: float, auto: bool
) -> Thresholds:
    from imgbatch.export.report import Thresholds

    for name, value in (("--min-agreement", min_agreement), ("--max-top1-drop", max_top1_drop)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be a fraction between 0 and 1, got {value}")
    if min_agreement is None:
        min_agreement = 0.985 if auto else Thresholds().min_agreement
    return Thresholds(min_agreement=min_agreement, max_top1_drop=max_top1_drop, min_speedup=min_speedup)


def _recipe(
    preset: str | None, keep_fp32: list[str] | None, calib_count: int, options: ExportOptions
) -> QuantConfig:
    """The named preset, else the architecture's own (export.sources.Arch.preset), with the options'
    calibration count and FP32 nodes."""
    from imgbatch.export.build import default_config
    from imgbatch.export.quantize import get_preset

    config = get_preset(preset) if preset else default_config(options)
    config = config.replace(calib_count=calib_count)
    return config.keeping_fp32(keep_fp32) if keep_fp32 else config
