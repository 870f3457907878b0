"""End to end: checkpoint -> FP32 ONNX (parity-checked) -> static INT8 ONNX with the imgbatch contract.

The output is written atomically: everything is built in a temporary file beside ``output`` and
moved into place with ``os.replace`` only after it has been re-opened through
``imgbatch.core.modelfile.open_session``. A failed build leaves ``output`` as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from export import report as rep
from export.evalset import (
    NATURAL_PHOTOS,
    LabelledSet,
    calibration_set,
    list_images,
    load_eval_dir,
    natural_eval_set,
    search_set,
)
from export.metadata import imagenet_labels, write_metadata
from export.onnx_export import ParityReport, check_parity, export_any, load_batch
from export.quantize import QuantConfig, get_preset, prepare, quantize_int8
from export.sources import DEFAULT_ARCH, default_preset, load_source
from imgbatch.core.cpus import int8_pairs_saturate
from imgbatch.core.errors import UserError
from imgbatch.core.modelfile import inference_session, open_session, quantization_is_saturation_safe
from imgbatch.core.preprocess import PreprocessSpec
from imgbatch.core.samples import write_photos


@dataclass(frozen=True)
class BuildReport:
    path: Path
    quant_json: Path
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    parity: ParityReport
    graph_sha256: str
    report: dict | None = None  # type: ignore[type-arg]
    report_text: str = ""

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
    thresholds: rep.Thresholds = rep.Thresholds()
    gate: bool = True
    auto: bool = False
    benchmark: bool = True
    bench_budget_s: float = 3.0
    fp32_output: Path | None = None


def default_config(options: ExportOptions) -> QuantConfig:
    """The recipe when none is given: the preset of the model's architecture (export.sources)."""
    state_dict = options.torchscript is None and options.exported is None
    return get_preset(default_preset(options.arch, state_dict))


def _sizes_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _onnx_runner(path: Path, threads: int, exact_int8: bool = False) -> rep.Runner:
    session = inference_session(path, threads, exact_int8)
    return lambda x: session.run(None, {"input": x})[0]


def _torch_runner(model: object, threads: int) -> rep.Runner:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()  # type: ignore[operator,no-any-return]

    return run


def _logits(runner: rep.Runner, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([runner(x[i : i + batch]) for i in range(0, len(x), batch)])


def _bench_rows(
    rows: dict[str, rep.Row], runners: dict[str, Callable[[int], rep.Runner]], x: np.ndarray, budget: float
) -> None:
    for threads in sorted({1, rep.all_cores()}):
        for batch in (1, 8):
            xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
            made = {name: make(threads) for name, make in runners.items()}
            stats = rep.interleaved_latency(made, xb, budget_s=budget)
            for name, (p50, p95, runs) in stats.items():
                rows[name].latency.append(rep.Latency(batch, threads, round(p50, 2), round(p95, 2), runs))


def exact_int8(config: QuantConfig) -> bool:
    """Whether workers on this CPU will run ``config``'s model on ORT's exact INT8 kernels (modelfile)."""
    return not quantization_is_saturation_safe(config.to_json()) and int8_pairs_saturate()


def _speed_ratio(fp32: Path, int8: Path, x: np.ndarray, budget: float, exact: bool = False) -> float:
    xb = np.ascontiguousarray(np.resize(x, (8, *x.shape[1:])))
    stats = rep.interleaved_latency(
        {"fp32": _onnx_runner(fp32, 1), "int8": _onnx_runner(int8, 1, exact)}, xb, budget_s=budget
    )
    return stats["fp32"][0] / stats["int8"][0]


def _decoder_check(
    paths: list[Path],
    spec: PreprocessSpec,
    int8_fast: np.ndarray,
    torch_runner: rep.Runner,
    int8_runner: rep.Runner,
    labels: list[int] | None,
) -> str | None:
    """Does the workers' fast JPEG decoder (libjpeg-turbo + OpenCV) move accuracy against Pillow?

    The evaluation photos are decoded again by Pillow alone; FP32 on those is the reference for both.
    ``int8_fast``: INT8 logits on the photos as decoded for the rest of the report (fast path).
    """
    from imgbatch.core import preprocess

    if not preprocess.HAVE_FAST_JPEG:
        return None
    x_pillow = np.stack([preprocess.load_tensor_pillow(p, spec) for p in paths])
    reference = _logits(torch_runner, x_pillow).argmax(1)
    fast, pillow = int8_fast.argmax(1), _logits(int8_runner, x_pillow).argmax(1)
    text = (
        f"INT8 top-1 agreement with FP32 (Pillow decode) {np.mean(fast == reference):.1%} when the photos "
        f"are decoded the workers' way (JPEG: libjpeg-turbo + OpenCV), {np.mean(pillow == reference):.1%} "
        f"when Pillow decodes them; same INT8 top-1 under both decoders on {np.mean(fast == pillow):.1%}"
    )
    if labels is not None:
        y = np.asarray(labels)
        text += f"; top-1 accuracy {np.mean(fast == y):.1%} vs {np.mean(pillow == y):.1%}"
    return text


def export_model(
    output: Path, config: QuantConfig | None = None, options: ExportOptions | None = None
) -> BuildReport:
    """Checkpoint -> FP32 ONNX (parity) -> quantized ONNX -> report -> gate -> atomic install."""
    started = time.perf_counter()
    options = options or ExportOptions()
    output = Path(output).expanduser().absolute()
    config = config or default_config(options)
    _prepare_output_dir(output)
    source = load_source(options.arch, options.weights, options.torchscript, options.exported)
    spec = source.spec
    labels = imagenet_labels()
    calib_paths = list_images(options.calib_dir, "calibration") if options.calib_dir else None
    evaluation = load_eval_dir(options.eval_dir, options.labels_csv, labels) if options.eval_dir else None
    if options.labels_csv is not None and options.eval_dir is None:
        raise UserError("--labels needs --eval DIR: the labelled images")
    if calib_paths is not None:
        config = config.replace(calib_count=len(calib_paths))

    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.build-", dir=output.parent))
    staged_model = work / "model.onnx"
    try:
        model = source.model
        fp32 = export_any(model, work / "fp32.onnx", image_size=spec.crop)
        parity = check_parity(model, fp32, write_photos(work / "photos"), spec)
        if calib_paths is None:
            calib_paths = calibration_set(work / "calib", config.calib_count, config.calib_seed)
        if evaluation is None:
            evaluation = LabelledSet(
                natural_eval_set(work / "eval", options.eval_count),
                None,
                f"natural photos: variants of {len(NATURAL_PHOTOS)} photos "
                f"({', '.join(NATURAL_PHOTOS[:6])}, ...)",
            )
        x_eval = load_batch(evaluation.paths, spec)

        torch_logits = _logits(_torch_runner(model, rep.all_cores()), x_eval)
        fp32_logits = _logits(_onnx_runner(fp32, rep.all_cores()), x_eval)
        auto_info = None
        prepped = prepare(fp32, work / "prepped.onnx")
        quantized = None
        if options.auto and config.mode == "static":
            from export.auto import search

            # Photos the gate will not see (export.auto): the user's calibration images, or other
            # variants of the natural photos.
            search_paths = calib_paths
            where = f"calibration images from {options.calib_dir}"
            if not options.calib_dir:
                search_paths = search_set(work / "search", options.eval_count)
                where = "other variants of the natural photos"
            x_search = load_batch(search_paths, spec)
            config, auto_info, quantized = search(
                fp32,
                prepped,
                work,
                calib_paths,
                config,
                spec,
                x_search,
                _logits(_torch_runner(model, rep.all_cores()), x_search),
                options.thresholds,
                budget=min(options.bench_budget_s, 2.0),
            )
            auto_info["search_photos"] = f"{len(search_paths)} {where}, not the evaluation photos"
        if quantized is None:
            quantized = quantize_int8(
                fp32,
                work / "int8.onnx",
                calib_paths,
                config,
                spec,
                cache_path=work / "calib.cache.json",
                prepped_path=prepped,
            )

        proto = onnx.load_model(str(quantized))
        write_metadata(
            proto,
            arch=source.arch,
            quantization_json=config.to_json(),
            source_sha256=source.sha256,
            spec=spec,
            labels=labels,
        )
        onnx.save_model(proto, str(staged_model))
        _, info = open_session(staged_model)  # read back exactly as a worker will

        is_int8 = config.mode != "fp32"
        exact = exact_int8(config)
        rows = {
            "PyTorch eager FP32": rep.Row("PyTorch eager FP32", _sizes_mb(source.path)),
            "ONNX FP32": rep.Row("ONNX FP32", _sizes_mb(fp32)),
        }
        if is_int8:
            rows["ONNX INT8"] = rep.Row("ONNX INT8", _sizes_mb(staged_model))
        y = evaluation.labels
        rep.fill_accuracy(rows["PyTorch eager FP32"], torch_logits, torch_logits, y)
        rep.fill_accuracy(rows["ONNX FP32"], fp32_logits, torch_logits, y)
        decoders = None
        if is_int8:
            int8_runner = _onnx_runner(staged_model, rep.all_cores(), exact)
            int8_logits = _logits(int8_runner, x_eval)
            rep.fill_accuracy(rows["ONNX INT8"], int8_logits, torch_logits, y)
            decoders = _decoder_check(
                evaluation.paths, spec, int8_logits, _torch_runner(model, rep.all_cores()), int8_runner, y
            )
        error_sources = None
        if config.mode == "static":
            from export import error_sources as errs

            figures = errs.measure(
                prepped,
                staged_model,
                work,
                lambda path: _logits(_onnx_runner(path, rep.all_cores(), exact), x_eval),
                torch_logits,
                int8_logits,
            )
            error_sources = errs.describe(figures)
        if options.benchmark:
            runners: dict[str, Callable[[int], rep.Runner]] = {
                "PyTorch eager FP32": lambda t: _torch_runner(model, t),
                "ONNX FP32": lambda t: _onnx_runner(fp32, t),
            }
            if is_int8:
                runners["ONNX INT8"] = lambda t: _onnx_runner(staged_model, t, exact)
            _bench_rows(rows, runners, x_eval[:8], options.bench_budget_s)

        ratios = []
        verdict = None
        if is_int8:
            for slow in ("ONNX FP32", "PyTorch eager FP32"):
                r = rep.speedup(rows["ONNX INT8"], rows[slow])
                if r is not None:
                    ratios.append(f"INT8 vs {slow}, batch 8, 1 thread: {r:.2f}x images/s")
            int8_mb, fp32_mb = _sizes_mb(staged_model), _sizes_mb(fp32)
            ratios.append(f"INT8 file {int8_mb:.2f} MB = {int8_mb / fp32_mb:.1%} of FP32 ONNX")
            verdict = rep.gate(rows["ONNX FP32"], rows["ONNX INT8"], options.thresholds)
        gate_passed = verdict is None or verdict.passed
        report = {
            "source": source.describe(),
            "output": str(output)
            if (gate_passed or not options.gate)
            else f"{output} (NOT written: gate refused)",
            "parity": f"max |logit diff| {parity.max_abs_diff:.1e} (tolerance {parity.atol:.0e}), "
            f"top-1 equal on "
            f"{parity.top1_agree}/{parity.images} photos",
            "quantization": config.describe(),
            "calibration": f"{len(calib_paths)} images"
            + (
                f" from {options.calib_dir}"
                if options.calib_dir
                else f" (bundled photo variants, seed {config.calib_seed})"
            ),
            "evaluation": evaluation.describe() + "; reference for agreement: PyTorch eager FP32",
            "decoders": decoders,
            "error_sources": error_sources,
            "machine": f"{rep.all_cores()} cores, "
            + (
                "x86 without VNNI"
                if int8_pairs_saturate()
                else "INT8 sums exact in 32 bits (VNNI or not x86)"
            )
            + "; onnxruntime CPU"
            + ("; INT8 on ORT's exact u8u8 kernels (model not saturation-safe)" if is_int8 and exact else "")
            + "; latency = p50/p95 of interleaved runs",
            "rows": [rep.row_dict(r) for r in rows.values()],
            "ratios": ratios,
            "auto": auto_info,
            "gate": None
            if verdict is None
            else {
                "verdict": ("PASSED" if verdict.passed else "REFUSED")
                + ("" if options.gate else " (gate off)"),
                "checks": verdict.checks,
                "thresholds": asdict(options.thresholds),
            },
            "config": json.loads(config.to_json()),
            "graph_sha256": info.graph_sha256,
            "source_sha256": source.sha256,
        }
        md_path, json_path = report_paths(output)
        text = rep.write_report(report, md_path, json_path)
        if not gate_passed and options.gate:
            raise rep.GateRefused(
                "gate refused the INT8 model, nothing written to "
                f"{output}: {'; '.join(verdict.failures())} (report: {md_path})"  # type: ignore[union-attr]
            )
        if options.fp32_output is not None:
            shutil.copyfile(fp32, Path(options.fp32_output))
        # The work directory sits beside the target, so os.replace is an atomic rename on one
        # filesystem: readers see the old file or the complete new one, never a partial write.
        os.replace(staged_model, output)
        sidecar = quant_json_path(output)
        tmp_json = work / "quant.json"
        tmp_json.write_text(config.to_json() + "\n")
        os.replace(tmp_json, sidecar)
        return BuildReport(
            path=output,
            quant_json=sidecar,
            fp32_bytes=fp32.stat().st_size,
            int8_bytes=output.stat().st_size,
            seconds=time.perf_counter() - started,
            parity=parity,
            graph_sha256=info.graph_sha256,
            report=report,
            report_text=text,
        )
    except OSError as exc:
        raise UserError(f"cannot write model to {output}: {exc.strerror or exc}") from exc
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
