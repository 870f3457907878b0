"""End to end: checkpoint -> FP32 ONNX (parity-checked) -> static INT8 ONNX with the imgbatch contract.

``export_model`` runs the steps in order: build the FP32 ONNX, check its parity with PyTorch, quantize
(or search a recipe with ``--auto``, export.auto), evaluate (export.evaluate), measure speed
(export.measure), gate, and install; the report (export.export_report) records each step.

The output is written atomically: everything is built in a temporary file beside ``output`` and
moved into place with ``os.replace`` only after it has been re-opened through
``imgbatch.core.modelfile.open_session``. A failed build leaves ``output`` as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

from imgbatch.core.errors import UserError
from imgbatch.core.modelfile import open_session
from imgbatch.core.runtime_choice import planned_runtime
from imgbatch.core.samples import write_photos
from imgbatch.export.auto import AutoSearch, SearchPhotos, search
from imgbatch.export.evalset import (
    NATURAL_PHOTOS,
    LabelledSet,
    calibration_set,
    list_images,
    load_eval_dir,
    natural_eval_set,
    search_set,
)
from imgbatch.export.evaluate import evaluate
from imgbatch.export.export_report import ExportReport, GateDecision, GateRefused, ReportedFailure
from imgbatch.export.measure import bench, describe_machine, ratios
from imgbatch.export.metadata import imagenet_labels, write_metadata
from imgbatch.export.onnx_export import ParityReport, check_parity, export_any, load_batch
from imgbatch.export.quantize import QuantConfig, get_preset, prepare, quantize_int8
from imgbatch.export.report import Row, Thresholds, all_cores, gate
from imgbatch.export.runners import (
    ONNX_INT8,
    RUNTIME_ROWS,
    ComparedModels,
    exact_int8,
    logits,
    openvino_available,
    torch_runner,
)
from imgbatch.export.sources import DEFAULT_ARCH, Source, default_preset, load_source


@dataclass(frozen=True)
class BuildReport:
    """What ``export_model`` installed, and its report."""

    path: Path
    quant_json: Path
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    report: ExportReport

    @property
    def parity(self) -> ParityReport:
        return self.report.parity

    def summary(self) -> str:
        return (
            f"wrote {self.path} ({self.int8_bytes / 1e6:.2f} MB INT8, FP32 {self.fp32_bytes / 1e6:.2f} MB) "
            f"in {self.seconds:.1f} s; FP32 ONNX vs torch max |logit diff| {self.parity.max_abs_diff:.1e} "
            f"on {self.parity.images} photos"
        )


def quant_json_path(model_path: Path) -> Path:
    """``<dir>/<stem>.quant.json`` beside the model (``x.int8.onnx`` -> ``x.int8.quant.json``)."""
    return model_path.with_suffix(".quant.json")


def report_paths(model_path: Path) -> tuple[Path, Path]:
    """``<stem>.report.md`` and ``<stem>.report.json`` beside the model."""
    return model_path.with_suffix(".report.md"), model_path.with_suffix(".report.json")


def _prepare_output_dir(output: Path) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        # mkdir reports a file in the way as "File exists", which does not tell the user which one.
        ancestors = (output.parent, *output.parent.parents)
        blocker = next((p for p in ancestors if p.exists() and not p.is_dir()), None)
        where = f"{blocker} is a file, not a directory" if blocker else (exc.strerror or str(exc))
        raise UserError(f"cannot create output directory {output.parent}: {where}") from exc
    except OSError as exc:
        raise UserError(f"cannot create output directory {output.parent}: {exc.strerror or exc}") from exc
    if output.is_dir():
        raise UserError(f"output {output} is a directory; give a file path such as {output / 'model.onnx'}")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"output directory {output.parent} is not writable")


@dataclass(frozen=True)
class ExportOptions:
    arch: str = DEFAULT_ARCH
    weights: Path | None = None
    torchscript: Path | None = None
    exported: Path | None = None
    calib_dir: Path | None = None
    eval_dir: Path | None = None
    labels_csv: Path | None = None
    eval_count: int = 1000
    thresholds: Thresholds = Thresholds()
    gate: bool = True
    auto: bool = False
    benchmark: bool = True
    bench_budget_s: float = 3.0
    fp32_output: Path | None = None
    runtime: str = "auto"  # the runtime the gate is applied to; auto: the one workers here would pick


def default_config(options: ExportOptions) -> QuantConfig:
    """The recipe when none is given: the preset of the model's architecture (export.sources)."""
    state_dict = options.torchscript is None and options.exported is None
    return get_preset(default_preset(options.arch, state_dict))


@dataclass(frozen=True)
class Photos:
    """The photos one export reads: the user's, or variants of the bundled ones made in its work dir."""

    calibration: list[Path]
    evaluation: LabelledSet
    x_eval: np.ndarray  # the evaluation photos as the model's input


class UserPhotos(NamedTuple):
    calibration: list[Path] | None  # None: variants of the bundled photos
    evaluation: LabelledSet | None  # None: variants of the natural photos


def _user_photos(options: ExportOptions, labels: list[str]) -> UserPhotos:
    """The calibration and evaluation images the user gave, checked before anything is built."""
    calibration = list_images(options.calib_dir, "calibration") if options.calib_dir else None
    evaluation = load_eval_dir(options.eval_dir, options.labels_csv, labels) if options.eval_dir else None
    if options.labels_csv is not None and options.eval_dir is None:
        raise UserError("--labels needs --eval DIR: the labelled images")
    return UserPhotos(calibration, evaluation)


def _photos(
    given: UserPhotos, config: QuantConfig, options: ExportOptions, source: Source, work: Path
) -> Photos:
    """The user's photos where given, else variants of the bundled photos written to ``work``."""
    calibration, evaluation = given
    if calibration is None:
        calibration = calibration_set(work / "calib", config.calib_count, config.calib_seed)
    if evaluation is None:
        names = f"{', '.join(NATURAL_PHOTOS[:6])}, ..."
        evaluation = LabelledSet(
            natural_eval_set(work / "eval", options.eval_count),
            None,
            f"natural photos: variants of {len(NATURAL_PHOTOS)} photos ({names})",
        )
    return Photos(calibration, evaluation, load_batch(evaluation.paths, source.spec))


def _describe_calibration(photos: Photos, config: QuantConfig, options: ExportOptions) -> str:
    where = (
        f" from {options.calib_dir}"
        if options.calib_dir
        else f" (bundled photo variants, seed {config.calib_seed})"
    )
    return f"{len(photos.calibration)} images{where}"


def _search_photos(source: Source, photos: Photos, options: ExportOptions, work: Path) -> SearchPhotos:
    """Photos the gate will not see (export.auto): the user's calibration images, or other variants
    of the natural photos."""
    if options.calib_dir:
        paths, where = photos.calibration, f"calibration images from {options.calib_dir}"
    else:
        paths, where = search_set(work / "search", options.eval_count), "other variants of the natural photos"
    x = load_batch(paths, source.spec)
    reference = logits(torch_runner(source.model, all_cores()), x)
    return SearchPhotos(x, reference, f"{len(paths)} {where}, not the evaluation photos")


def _quantize(
    source: Source, fp32: Path, prepped: Path, photos: Photos, config: QuantConfig, options: ExportOptions
) -> tuple[QuantConfig, Path, AutoSearch | None]:
    """The quantized model, in the work dir beside ``fp32``; with the recipe it was made with (with
    ``--auto``: the one the search chose) and what the search saw."""
    work = fp32.parent
    if options.auto and config.mode == "static":
        search_photos = _search_photos(source, photos, options, work)
        budget = min(options.bench_budget_s, 2.0)
        chosen, record, quantized = search(
            fp32,
            prepped,
            work,
            photos.calibration,
            config,
            source.spec,
            search_photos,
            options.thresholds,
            budget,
        )
        return chosen, quantized, record
    quantized = quantize_int8(
        fp32,
        work / "int8.onnx",
        photos.calibration,
        config,
        source.spec,
        cache_path=work / "calib.cache.json",
        prepped_path=prepped,
    )
    return config, quantized, None


def _stage(quantized: Path, source: Source, config: QuantConfig, labels: list[str], staged: Path) -> str:
    """Write ``quantized`` with the imgbatch metadata to ``staged``; returns its graph hash."""
    proto = onnx.load_model(str(quantized))
    write_metadata(
        proto,
        arch=source.arch,
        quantization_json=config.to_json(),
        source_sha256=source.sha256,
        spec=source.spec,
        labels=labels,
    )
    onnx.save_model(proto, str(staged))
    _, info = open_session(staged)  # read back exactly as a worker will
    return info.graph_sha256


def _gate(rows: dict[str, Row], options: ExportOptions, staged: Path) -> GateDecision | None:
    """The gate's verdict on INT8 against FP32 ONNX, on the runtime workers will use (``--runtime``;
    auto: measured as workers measure it, on one thread); None when the recipe made no INT8 model."""
    if ONNX_INT8 not in rows:
        return None
    runtime, why = planned_runtime(staged, 1, options.runtime, None)
    fp32_row, int8_row = RUNTIME_ROWS[runtime]
    if int8_row not in rows:  # OpenVINO asked for but not measured: it does not import here
        runtime, why = "onnxruntime", "openvino is not available"
        fp32_row, int8_row = RUNTIME_ROWS[runtime]
    verdict = gate(rows[fp32_row], rows[int8_row], options.thresholds)
    return GateDecision(verdict, options.gate, options.thresholds, f"{runtime} ({options.runtime}: {why})")


def _install(staged: Path, fp32: Path, config: QuantConfig, output: Path, options: ExportOptions) -> Path:
    """Move the staged model to ``output``, its recipe beside it; returns the recipe's path."""
    if options.fp32_output is not None:
        shutil.copyfile(fp32, Path(options.fp32_output))
    # The work directory sits beside the target, so os.replace is an atomic rename on one
    # filesystem: readers see the old file or the complete new one, never a partial write.
    os.replace(staged, output)
    sidecar = quant_json_path(output)
    tmp_json = staged.parent / "quant.json"
    tmp_json.write_text(config.to_json() + "\n")
    os.replace(tmp_json, sidecar)
    return sidecar


def _cannot_write(output: Path, exc: OSError) -> str:
    return f"cannot write model to {output}: {exc.strerror or exc}"


def _build_and_measure(
    source: Source,
    labels: list[str],
    user_photos: UserPhotos,
    config: QuantConfig,
    options: ExportOptions,
    output: Path,
    work: Path,
) -> tuple[ExportReport, Path, Path]:
    """Every step up to the gate's verdict, in ``work``: returns the report, the staged model (with
    the imgbatch metadata) and the FP32 ONNX."""
    fp32 = export_any(source.model, work / "fp32.onnx", image_size=source.spec.crop)
    parity = check_parity(source.model, fp32, write_photos(work / "photos"), source.spec)
    photos = _photos(user_photos, config, options, source, work)
    prepped = prepare(fp32, work / "prepped.onnx")
    config, quantized, auto = _quantize(source, fp32, prepped, photos, config, options)
    staged = work / "model.onnx"
    graph_sha256 = _stage(quantized, source, config, labels, staged)

    int8 = None if config.mode == "fp32" else staged
    models = ComparedModels(source.model, source.path, fp32, int8, exact_int8(config), openvino_available())
    quantized_from = prepped if config.mode == "static" else None
    evaluation = evaluate(models, photos.evaluation, photos.x_eval, source.spec, quantized_from, work)
    if options.benchmark:
        bench(models, evaluation.rows, photos.x_eval[:8], options.bench_budget_s)
    decision = _gate(evaluation.rows, options, staged)
    report = ExportReport(
        source=source.describe(),
        output=output,
        parity=parity,
        config=config,
        calibration=_describe_calibration(photos, config, options),
        evaluation=photos.evaluation.describe() + "; reference for agreement: PyTorch eager FP32",
        machine=describe_machine(int8 is not None and models.exact_kernels),
        rows=list(evaluation.rows.values()),
        ratios=ratios(models, evaluation.rows),
        graph_sha256=graph_sha256,
        source_sha256=source.sha256,
        decoders=evaluation.decoders,
        error_sources=evaluation.error_sources,
        auto=auto,
        gate=decision,
    )
    return report, staged, fp32


def export_model(
    output: Path, config: QuantConfig | None = None, options: ExportOptions | None = None
) -> BuildReport:
    """Checkpoint -> FP32 ONNX (parity) -> quantized ONNX -> report -> gate -> atomic install.

    Returns what was installed, with its report. When the gate refuses the model, raises
    ``GateRefused``, which carries the report's text; ``output`` is then left as it was.
    """
    started = time.perf_counter()
    options = options or ExportOptions()
    output = Path(output).expanduser().absolute()
    config = config or default_config(options)
    _prepare_output_dir(output)
    source = load_source(options.arch, options.weights, options.torchscript, options.exported)
    labels = imagenet_labels()
    user_photos = _user_photos(options, labels)
    if user_photos.calibration is not None:
        config = config.replace(calib_count=len(user_photos.calibration))

    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.build-", dir=output.parent))
    try:
        report, staged, fp32 = _build_and_measure(source, labels, user_photos, config, options, output, work)
        md_path, json_path = report_paths(output)
        text = report.write(md_path, json_path)
        if report.gate is not None and report.gate.refuses:
            failures = "; ".join(report.gate.result.failures())
            raise GateRefused(
                f"gate refused the INT8 model, nothing written to {output}: {failures} (report: {md_path})",
                text,
            )
        try:
            sidecar = _install(staged, fp32, report.config, output, options)
        except OSError as exc:
            raise ReportedFailure(_cannot_write(output, exc), text) from exc
        seconds = time.perf_counter() - started
        return BuildReport(output, sidecar, fp32.stat().st_size, output.stat().st_size, seconds, report)
    except OSError as exc:
        raise UserError(_cannot_write(output, exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


def build_model(
    output: Path,
    calib_count: int = 100,
    seed: int = 0,
    config: QuantConfig | None = None,
    fp32_output: Path | None = None,
    options: ExportOptions | None = None,
) -> BuildReport:
    """Build the model at ``output`` (plus ``<stem>.quant.json`` and the report); returns what was measured.

    ``calib_count`` and ``seed`` override the preset's calibration set size and variant seed.
    ``fp32_output``, if given, also keeps the parity-checked FP32 ONNX (without metadata) there.
    """
    # Validating the recipe first means a bad count fails before any file or directory is touched.
    options = options or ExportOptions()
    config = (config or default_config(options)).replace(calib_count=calib_count, calib_seed=seed)
    if fp32_output is not None:
        options = replace(options, fp32_output=fp32_output)
    return export_model(output, config, options)


def build_default_model(output: Path, calib_count: int = 100, seed: int = 0) -> Path:
    """Build the default EfficientNet-Lite0 static INT8 model at ``output``; returns its path."""
    return build_model(output, calib_count=calib_count, seed=seed).path
