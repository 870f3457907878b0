"""What the conversion gained and lost: size, latency, accuracy per model, and the gate on them.

Latencies are measured in interleaved rounds (eager, FP32 ONNX, INT8 ONNX, eager, ...) so that noise
from other processes hits every row alike and the ratios stay meaningful on a busy machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Latency:
    batch: int
    threads: int
    p50_ms: float
    p95_ms: float
    runs: int

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else 0.0


def interleaved_latency(
    runners: dict[str, Runner], x: np.ndarray, min_runs: int = 5, max_runs: int = 50, budget_s: float = 4.0
) -> dict[str, tuple[float, float, int]]:
    """p50/p95 latency (ms) per runner on input ``x``, runners taking turns each round."""
    for run in runners.values():  # warm-up: first-call allocations and lazy initialisation
        run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_runs or (rounds < max_runs and time.perf_counter() - started < budget_s):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            times[name].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
    return {
        name: (float(np.percentile(v, 50)), float(np.percentile(v, 95)), len(v)) for name, v in times.items()
    }


@dataclass
class Row:
    name: str
    size_mb: float | None
    latency: list[Latency] = field(default_factory=list)
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    top1_accuracy: float | None = None
    top5_accuracy: float | None = None

    def latency_at(self, batch: int, threads: int) -> Latency | None:
        return next((lat for lat in self.latency if lat.batch == batch and lat.threads == threads), None)


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    # Stable, so that tied logits rank as argmax ranks them (first index first), as workers report.
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl_divergence(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) over the rows: how far a model's output
    distribution is from FP32's, a finer figure than top-1 agreement."""
    p = _softmax(reference.astype(np.float64))
    q = _softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def fill_accuracy(row: Row, logits: np.ndarray, reference: np.ndarray, labels: Sequence[int] | None) -> None:
    """Agreement with the FP32 reference's top-1, mean top-5 overlap, and accuracy when labelled."""
    top5, ref5 = _topk(logits, 5), _topk(reference, 5)
    row.top1_agreement = float(np.mean(top5[:, 0] == ref5[:, 0]))
    row.top5_overlap = float(np.mean([len(set(a) & set(b)) / 5.0 for a, b in zip(top5, ref5, strict=True)]))
    if labels is not None:
        y = np.asarray(labels)
        row.top1_accuracy = float(np.mean(top5[:, 0] == y))
        row.top5_accuracy = float(np.mean(np.any(top5 == y[:, None], axis=1)))


@dataclass(frozen=True)
class Thresholds:
    min_agreement: float = 0.95  # INT8 top-1 agreement with FP32 on the evaluation photos (see README)
    max_top1_drop: float = 0.01  # absolute top-1 accuracy drop vs FP32, with labels
    min_speedup: float = 1.2  # INT8 / FP32 ONNX images/s at batch 8 on one thread


@dataclass
class GateResult:
    passed: bool
    checks: list[tuple[str, str, bool]]  # (figure, "value vs limit", ok)

    def failures(self) -> list[str]:
        return [f"{figure} {detail}" for figure, detail, ok in self.checks if not ok]


def speedup(fast: Row, slow: Row, batch: int = 8, threads: int = 1) -> float | None:
    a, b = fast.latency_at(batch, threads), slow.latency_at(batch, threads)
    return b.p50_ms / a.p50_ms if a and b and a.p50_ms > 0 else None


def gate(fp32: Row, int8: Row, thresholds: Thresholds) -> GateResult:
    checks: list[tuple[str, str, bool]] = []
    if int8.top1_agreement is not None:
        ok = int8.top1_agreement >= thresholds.min_agreement
        checks.append(
            (
                "top-1 agreement with FP32",
                f"{int8.top1_agreement:.1%} (min {thresholds.min_agreement:.1%})",
                ok,
            )
        )
    if int8.top1_accuracy is not None and fp32.top1_accuracy is not None:
        drop = fp32.top1_accuracy - int8.top1_accuracy
        checks.append(
            (
                "top-1 accuracy drop",
                f"{drop * 100:.1f} points (max {thresholds.max_top1_drop * 100:.1f})",
                drop <= thresholds.max_top1_drop + 1e-9,
            )
        )
    ratio = speedup(int8, fp32)
    if ratio is not None:
        checks.append(
            (
                "speed-up over FP32 ONNX (batch 8, 1 thread)",
                f"{ratio:.2f}x (min {thresholds.min_speedup:.2f}x)",
                ratio >= thresholds.min_speedup,
            )
        )
    return GateResult(all(ok for _, _, ok in checks), checks)
