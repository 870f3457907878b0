"""How fast each model runs, and where: the report's latency columns, speed ratios and machine line.

Latencies come from ``report.interleaved_latency``: the models take turns, so a busy machine slows
them all alike and the ratios hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgbatch.core.cpus import int8_pairs_saturate
from imgbatch.core.runtimes import OPENVINO_PRECISION
from imgbatch.export.report import Latency, Row, all_cores, interleaved_latency, speedup
from imgbatch.export.runners import (
    ONNX_FP32,
    ONNX_INT8,
    OPENVINO_FP32,
    OPENVINO_INT8,
    TORCH_FP32,
    ComparedModels,
    onnx_runner,
    openvino_available,
    size_mb,
)


def _batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images from ``x``, repeated if it has fewer."""
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))


def bench(models: ComparedModels, rows: dict[str, Row], x: np.ndarray, budget_s: float) -> None:
    """Add to each row its latency at batch 1 and 8, on one thread and on all cores."""
    for threads in sorted({1, all_cores()}):
        for batch in (1, 8):
            runners = {name: models.runner(name, threads) for name in rows}
            stats = interleaved_latency(runners, _batch_of(x, batch), budget_s=budget_s)
            for name, (p50, p95, runs) in stats.items():
                rows[name].latency.append(Latency(batch, threads, round(p50, 2), round(p95, 2), runs))


def speed_ratio(fp32: Path, int8: Path, x: np.ndarray, budget_s: float, exact: bool = False) -> float:
    """FP32 / INT8 ONNX latency at batch 8 on one thread (``exact``: INT8 on ORT's exact kernels)."""
    runners = {"fp32": onnx_runner(fp32, 1), "int8": onnx_runner(int8, 1, exact)}
    stats = interleaved_latency(runners, _batch_of(x, 8), budget_s=budget_s)
    return stats["fp32"][0] / stats["int8"][0]


def ratios(models: ComparedModels, rows: dict[str, Row]) -> list[str]:
    """The report's notes on what INT8 gained: speed-ups (when benchmarked) and file size."""
    if models.int8 is None:
        return []
    notes = []
    for fast, slow in ((ONNX_INT8, ONNX_FP32), (ONNX_INT8, TORCH_FP32), *_openvino_pairs(rows)):
        ratio = speedup(rows[fast], rows[slow])
        if ratio is not None:
            notes.append(f"{fast} vs {slow}, batch 8, 1 thread: {ratio:.2f}x images/s")
    int8_mb, fp32_mb = size_mb(models.int8), size_mb(models.fp32)
    notes.append(f"INT8 file {int8_mb:.2f} MB = {int8_mb / fp32_mb:.1%} of FP32 ONNX")
    return notes


def _openvino_pairs(rows: dict[str, Row]) -> list[tuple[str, str]]:
    """(faster, slower) row pairs of the OpenVINO rows: INT8 vs its FP32, each vs onnxruntime's."""
    pairs = [(OPENVINO_INT8, OPENVINO_FP32), (OPENVINO_INT8, ONNX_INT8), (OPENVINO_FP32, ONNX_FP32)]
    return [(a, b) for a, b in pairs if a in rows and b in rows]


def describe_machine(exact_int8_kernels: bool) -> str:
    """Cores and INT8 arithmetic of this machine, which the latencies depend on."""
    arithmetic = (
        "x86 without VNNI" if int8_pairs_saturate() else "INT8 sums exact in 32 bits (VNNI or not x86)"
    )
    kernels = "; INT8 on ORT's exact u8u8 kernels (model not saturation-safe)" if exact_int8_kernels else ""
    openvino = f", OpenVINO CPU ({OPENVINO_PRECISION})" if openvino_available() else ""
    return (
        f"{all_cores()} cores, {arithmetic}; onnxruntime CPU{kernels}{openvino}; "
        "latency = p50/p95 of interleaved runs"
    )
