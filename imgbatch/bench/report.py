"""The text form of a bench's result: the header, the bare loops, the ratio lines and the table."""

from __future__ import annotations

import math
from typing import Any

STAGE_NAMES = ("queue", "decode", "infer", "persist")
QUANTILES = ("p50", "p95", "p99")


def render(result: dict[str, Any]) -> str:
    """The text `imgbatch bench` prints: what ran on what, the bare loops, the ratios, then the table."""
    s = result["image_set"]
    cfg = result["config"]
    primaries = [
        r
        for r in result["pipeline"]
        if (r["workers"], r["batch_size"]) == (cfg["primary_workers"], cfg["primary_batch"])
    ]
    lines = [
        f"imgbatch bench: {s['images']} images from {s['directory']} (mean {s['mean_megapixels']:.2f} MP, "
        f"{s['multi_megapixel']} of >= 3 MP, max {s['max_megapixels']:.1f} MP, {s['mean_kb']:.0f} kB mean), "
        f"model {result['model']['arch']} INT8, {result['machine']['cpus']} CPUs, "
        f"onnxruntime {result['machine']['onnxruntime']}",
        "",
        *bare_lines(result["bare"]),
        *[f"{_pipeline_label(r):<76} {r['images_per_s']:7.1f} images/s" for r in primaries],
        "",
        *ratio_lines(result),
        *decode_ratio_lines(result["decode_ratios"]),
        *runtime_lines(result),
        f"every image of every bench job has exactly one result row: "
        f"{'yes' if result['one_result_per_image'] else 'NO'}",
        *parity_lines(result["decoder_parity"]),
    ]
    lines += ["", pipeline_table(result["pipeline"] + ([result["fp32"]] if result["fp32"] else []))]
    return "\n".join(lines)


def _pipeline_label(run: dict[str, Any]) -> str:
    return (
        f"pipeline, decode {run['decode']} (submit -> Redis -> {run['workers']} worker processes -> SQLite), "
        f"batch {run['batch_size']}, {run['runtime']}"
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def stage_cell(stages: dict[str, dict[str, float]], stage: str) -> str:
    q = stages.get(stage, {})
    return "/".join(_fmt(q.get(name), 1) for name in QUANTILES)


def pipeline_table(runs: list[dict[str, Any]]) -> str:
    """One line per run, perf_analyzer style: throughput, stage latency p50/p95/p99, peak RSS per worker."""
    header = (
        f"{'model':5} {'decode':6} {'runtime':11} {'workers':>7} {'batch':>5} {'ort':>3} {'images':>6} "
        f"{'images/s':>9}  "
        + "  ".join(f"{name + ' p50/p95/p99 ms':>26}" for name in STAGE_NAMES)
        + f"  {'peak RSS MB/worker':>18}"
    )
    lines = [
        "batch = paths per task message; ort = images per runtime call; latencies are per image",
        header,
        "-" * len(header),
    ]
    for run in runs:
        rss = ",".join(f"{v:.0f}" for v in run["peak_rss_mb"]) or "-"
        lines.append(
            f"{run['label']:5} {run['decode']:6} {run['runtime']:11} {run['workers']:>7} "
            f"{run['batch_size']:>5} {run['infer_batch']:>3} {run['images']:>6} {run['images_per_s']:>9.1f}  "
            + "  ".join(f"{stage_cell(run['stages'], name):>26}" for name in STAGE_NAMES)
            + f"  {rss:>18}"
        )
    return "\n".join(lines)


def bare_lines(bare: dict[str, dict[str, Any]]) -> list[str]:
    names = {
        "model": "bare loop, model only (pre-decoded tensors)",
        "pillow": "bare loop, Pillow + onnxruntime (reference preprocessing)",
        "exact": "bare loop, pipeline decode exact (libjpeg-turbo + Pillow resize) + model",
        "fast": "bare loop, pipeline decode fast (libjpeg-turbo/OpenCV, Pillow otherwise) + model",
    }
    lines = []
    for mode, result in bare.items():
        if mode == "ray":
            label = (
                f"Ray Data, {result['actors']} actors x the workers' Classifier, batch {result['batch_size']}"
                + (", steady state" if result["steady_state"] else "")
            )
            lines.append(
                f"{label:<76} {_fmt(result['images_per_s']):>7} images/s  (with the actors' start-up: "
                f"{_fmt(result['images_per_s_with_startup'])}; no database; Ray {result['ray']})"
            )
            continue
        lines.append(
            f"{names[mode]:<76} {result['images_per_s']:7.1f} images/s  "
            f"({result['processes']} processes x {result['ort_threads']} ORT thread, batch "
            f"{result['batch_size']}; decode {result['decode_ms_per_image']:.2f} ms/image, "
            f"infer {result['infer_ms_per_image']:.2f} ms/image per process)"
        )
    return lines


def ratio_lines(result: dict[str, Any]) -> list[str]:
    labels = {
        "pipeline_vs_bare_pillow": "pipeline / bare loop with Pillow decode",
        "pipeline_vs_bare_own_decode": "pipeline / bare loop with the pipeline's decode",
        "pipeline_vs_ray": "pipeline / Ray Data (same decode and model; --ray)",
        "int8_vs_fp32": "INT8 pipeline / FP32 pipeline",
        "scaling": "scaling: pipeline images/s with {hi} worker processes / with 1",
        "peak_rss_mb_batch8": "peak RSS per worker process at onnxruntime batch 8 (MB, max)",
    }
    lines = []
    for name, check in result["targets"].items():
        label = labels[name].format(hi=result["config"]["max_workers"])
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        value = _fmt(check["value"], 1 if name == "peak_rss_mb_batch8" else 3)
        lines.append(f"{label:<66} {value:>8}   target {check['target']:<7} {verdict}")
        if name == "int8_vs_fp32":
            for key, text in _INT8_EXPLAINED.items():
                if result["ratios"].get(key) is not None:
                    lines.append(f"{text:<66} {_fmt(result['ratios'][key], 3):>8}")
    return lines


def runtime_lines(result: dict[str, Any]) -> list[str]:
    """With more than one runtime (--runtimes): each one's pipeline against the Pillow + onnxruntime
    bare loop and against the first runtime's pipeline."""
    figures = result["runtime_ratios"]
    if len(figures) < 2:
        return []
    first = result["config"]["runtimes"][0]
    lines = []
    for runtime, ratios in figures.items():
        label = f"pipeline on {runtime} / bare loop with Pillow decode + onnxruntime"
        lines.append(f"{label:<66} {_fmt(ratios['pipeline_vs_bare_pillow'], 3):>8}")
        if runtime != first:
            label = f"pipeline on {runtime} / pipeline on {first}"
            lines.append(f"{label:<66} {_fmt(ratios['vs_primary_runtime'], 3):>8}")
    return lines


# Printed under the INT8 / FP32 line: the model's own ratio and the most the pipeline's can be when
# both decode the same files (from the two runs' mean per-image times).
_INT8_EXPLAINED = {
    "int8_vs_fp32_inference": "  of which: inference alone (mean infer ms/image in the two runs)",
    "int8_vs_fp32_ceiling": "  at most, as both decode the same files: (decode+infer) FP32/INT8",
}


def decode_ratio_lines(by_decode: dict[str, dict[str, float | None]]) -> list[str]:
    """One line per decoder: its pipeline against the Pillow + onnxruntime loop, its own bare loop, Ray."""
    label = "pipeline, decode {}: / Pillow+onnxruntime loop, / same-decode loop, / Ray Data"
    return [
        f"{label.format(decode):<66} "
        f"{_fmt(r['vs_bare_pillow'], 3):>8} {_fmt(r['vs_bare_own_decode'], 3):>8} {_fmt(r['vs_ray'], 3):>8}"
        for decode, r in by_decode.items()
    ]


def parity_lines(parity: dict[str, Any]) -> list[str]:
    """How far each decoder's input is from the reference preprocessing, and whether top-1 moves."""
    return [
        f"decode {decode} vs reference on {parity['images']} JPEGs: bit-identical {p['identical']}, "
        f"mean |diff| {p['mean_abs_diff_levels']:.2f} levels of 255, same top-1 {p['top1_agreement']:.1%}"
        for decode, p in parity.get("decoders", {}).items()
    ]
