"""Inference runtimes: a model file loaded once, run on float32 NCHW batches, logits (or
probabilities, as the contract says) out.

onnxruntime is the reference and the fallback (``imgbatch.core.modelfile``'s session). OpenVINO is the
second runtime: the same ONNX file, read by OpenVINO's ONNX frontend, compiled for the CPU. Both check
the same contract (metadata, one NCHW input, as many outputs as labels) and identify the model by the
sha256 of the bytes they were made from.

``auto`` picks OpenVINO when it imports, compiles the model and is measured faster than onnxruntime
for that model on this CPU at the workers' batch and thread count, else onnxruntime. The measurement
(a short interleaved probe in a child process, so no worker carries both runtimes) is made once per
(model sha256, CPU, threads, runtime versions) and cached in ``<data dir>/runtime-choice.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from imgbatch.core.cpus import cpu_signature, int8_pairs_saturate
from imgbatch.core.errors import ModelFileError, UserError
from imgbatch.core.modelfile import (
    ModelInfo,
    check_class_count,
    check_input_shapes,
    first_line,
    open_session,
    read_model_bytes,
)

RUNTIMES = ("onnxruntime", "openvino")
RuntimeChoice = Literal["auto", "onnxruntime", "openvino"]
# OpenVINO runs a model's non-quantized layers in bf16 by default on CPUs with AVX-512 bf16 (or AMX).
# Pinned to f32: on 750 ImageNet photos bf16 moved INT8's top-1 agreement with FP32 (docs/quantization.md,
# "Runtimes"), and f32 is still faster than onnxruntime here.
OPENVINO_PRECISION = "f32"
# The probe times batches of this many images, the workers' inference batch (worker.classify).
PROBE_BATCH = 8
PROBE_ROUNDS = 12
# OpenVINO must be at least this much faster to be picked: onnxruntime is the reference, and a tie
# within the probe's noise should not flip a machine to the other runtime.
MIN_GAIN = 1.05
CACHE_NAME = "runtime-choice.json"

log = logging.getLogger("imgbatch")


class ModelRunner(Protocol):
    """A model loaded once; the batch loop owns nothing else."""

    name: str  # "onnxruntime" or "openvino": what result rows record
    info: ModelInfo

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for a float32 NCHW batch, one row per image."""
        ...


class OnnxRuntimeRunner:
    name = "onnxruntime"

    def __init__(self, session: Any, info: ModelInfo) -> None:
        self.session = session
        self.info = info
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])


class OpenVinoRunner:
    name = "openvino"

    def __init__(self, compiled: Any, info: ModelInfo, precision: str) -> None:
        self.compiled = compiled
        self.info = info
        self.precision = precision
        self.request = compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        # share_outputs=False (the default): a copy, not a view the next call overwrites.
        return np.asarray(self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[0])


def openvino_version() -> str | None:
    """The installed openvino's version, without importing it; None if it is not installed."""
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def open_onnxruntime(path: Path, threads: int = 1, data: bytes | None = None) -> OnnxRuntimeRunner:
    session, info = open_session(Path(path), threads, data)
    return OnnxRuntimeRunner(session, info)


def open_openvino(
    path: Path, threads: int = 1, data: bytes | None = None, precision: str = OPENVINO_PRECISION
) -> OpenVinoRunner:
    """The model compiled by OpenVINO for this CPU. Errors (OpenVINO missing, a model it cannot read
    or compile, a broken contract) are ModelFileError."""
    path = Path(path)
    data = read_model_bytes(path) if data is None else data
    try:
        import openvino as ov
    except ImportError as exc:
        raise ModelFileError(f"runtime openvino is not available: {first_line(exc)}") from exc
    core = ov.Core()
    try:
        model = core.read_model(io.BytesIO(data))
    except Exception as exc:  # OpenVINO raises its own exception types
        raise ModelFileError(f"cannot load model {path} with openvino: {first_line(exc)}") from exc
    info = ModelInfo.from_metadata(path, _openvino_metadata(model))
    check_input_shapes(path, [list(i.get_partial_shape()) for i in model.inputs])
    _dynamic_batch(model, info)
    classes = model.outputs[0].get_partial_shape()[-1]
    if classes.is_static:
        check_class_count(info, classes.get_length())
    config = {
        "INFERENCE_NUM_THREADS": max(1, threads),
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        # Each worker process compiles its own model; pinned threads of N processes that do not know
        # of each other could share one core while another idles. The OS spreads them instead.
        "ENABLE_CPU_PINNING": False,
    }
    try:
        compiled = core.compile_model(model, "CPU", config)
    except Exception as exc:
        raise ModelFileError(f"cannot compile model {path} with openvino: {first_line(exc)}") from exc
    runner = OpenVinoRunner(compiled, replace(info, sha256=hashlib.sha256(data).hexdigest()), precision)
    if not classes.is_static:
        check_class_count(info, runner.run(np.zeros((1, *info.input_size), np.float32)).shape[-1])
    return runner


def _openvino_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO's ONNX frontend keeps under rt_info "framework"."""
    if not model.has_rt_info(["framework"]):
        return {}
    framework = model.get_rt_info()["framework"]
    return {str(key): model.get_rt_info(["framework", key]).astype(str) for key in framework}


def _dynamic_batch(model: Any, info: ModelInfo) -> None:
    """Workers run 1 to 8 images per call: a model exported with a fixed batch gets a dynamic one."""
    shape = model.inputs[0].get_partial_shape()
    if shape[0].is_dynamic:
        return
    try:
        model.reshape([-1, *info.input_size])
    except Exception as exc:
        raise ModelFileError(
            f"{info.path}: fixed batch {shape[0]} cannot be made dynamic for openvino: {first_line(exc)}"
        ) from exc


def open_runtime(
    path: Path, threads: int = 1, choice: RuntimeChoice = "auto", cache_dir: Path | None = None
) -> ModelRunner:
    """The model on the runtime ``choice`` asks for. An explicit runtime that cannot load the model is
    a ModelFileError; ``auto`` falls back to onnxruntime with a log line."""
    path = Path(path)
    data = read_model_bytes(path)
    if choice == "onnxruntime":
        return open_onnxruntime(path, threads, data)
    if choice == "openvino":
        return open_openvino(path, threads, data)
    require_runtime(choice)
    picked, why = auto_choice(path, data, threads, cache_dir)
    if picked == "openvino":
        try:
            return open_openvino(path, threads, data)
        except ModelFileError as exc:
            why = str(exc)
    log.info("runtime auto: onnxruntime for %s (%s)", path.name, why)
    return open_onnxruntime(path, threads, data)


def require_runtime(choice: str) -> None:
    """Fail fast with one line: an unknown runtime, or an explicitly asked one that does not import."""
    if choice not in ("auto", *RUNTIMES):
        raise UserError(f"unknown runtime {choice!r}: expected auto, {' or '.join(RUNTIMES)}")
    if choice == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            raise ModelFileError(f"runtime openvino is not available: {first_line(exc)}") from exc


def planned_runtime(path: Path, threads: int, choice: str, cache_dir: Path | None) -> tuple[str, str]:
    """The runtime workers will use for the model (``auto``: measured, cached), and why; without
    loading the model in this process. Workers still fall back to onnxruntime if OpenVINO then fails."""
    require_runtime(choice)
    if choice != "auto":
        return choice, "asked for"
    return auto_choice(Path(path), read_model_bytes(Path(path)), threads, cache_dir)


def auto_choice(path: Path, data: bytes, threads: int, cache_dir: Path | None) -> tuple[str, str]:
    """The runtime ``auto`` picks for this model here, and why: cached, or measured once and cached."""
    ov_version = openvino_version()
    if ov_version is None:
        return "onnxruntime", "openvino is not installed"
    key = choice_key(hashlib.sha256(data).hexdigest(), threads, ov_version)
    with _locked(cache_dir):
        cached = read_cache(cache_dir).get(key)
        if cached is None:
            try:
                cached = probe_in_child(path, threads)
            except RuntimeError as exc:
                return "onnxruntime", f"openvino probe failed: {exc}"
            write_cache(cache_dir, key, cached)
    if not cached.get("saturation_safe", True):
        return "onnxruntime", "INT8 model not saturation-safe on a CPU without VNNI: ORT's exact kernels"
    ort_ms, ov_ms = cached["onnxruntime_ms"], cached["openvino_ms"]
    measured = f"batch {PROBE_BATCH}, {threads} thread(s): openvino {ov_ms:.1f} ms, onnxruntime {ort_ms:.1f}"
    return ("openvino" if ov_ms * MIN_GAIN < ort_ms else "onnxruntime"), measured


def choice_key(sha256: str, threads: int, ov_version: str) -> str:
    """What a measured choice depends on: the model, the CPU, the threads, both runtimes' versions."""
    try:
        ort_version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort_version = "?"
    return (
        f"{sha256} | {cpu_signature()} | {threads} threads | onnxruntime {ort_version} | "
        f"openvino {ov_version} {OPENVINO_PRECISION}"
    )


@contextlib.contextmanager
def _locked(cache_dir: Path | None) -> Iterator[None]:
    """One process at a time probes (the pool processes of a worker start together); the others wait
    and read what it cached."""
    if cache_dir is None:
        yield
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir / f".{CACHE_NAME}.lock", "a")  # noqa: SIM115 - held across the yield
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_cache(cache_dir: Path | None) -> dict[str, dict[str, float]]:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(cache_dir: Path | None, key: str, figures: dict[str, float]) -> None:
    if cache_dir is None:
        return
    entries = {**read_cache(cache_dir), key: figures}
    tmp = cache_dir / f".{CACHE_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(tmp, cache_dir / CACHE_NAME)
    except OSError as exc:
        log.warning("cannot cache the runtime choice in %s: %s", cache_dir, exc)


def probe_in_child(path: Path, threads: int) -> dict[str, float]:
    """``probe`` in a fresh interpreter: the caller (a worker process) never holds both runtimes."""
    done = subprocess.run(
        [sys.executable, "-m", "imgbatch.core.runtimes", str(path), str(threads)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {done.returncode}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: float(figures[name]) for name in ("onnxruntime_ms", "openvino_ms", "saturation_safe")}


def probe(path: Path, threads: int, rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """Median ms per batch of ``PROBE_BATCH`` images of each runtime, taking turns (a busy machine slows
    both alike); and whether the model is safe from INT8 saturation on this CPU (else onnxruntime, which
    runs such a model on its exact kernels, is the only choice)."""
    data = read_model_bytes(path)
    runners: list[ModelRunner] = [open_onnxruntime(path, threads, data), open_openvino(path, threads, data)]
    x = np.random.default_rng(0).standard_normal((PROBE_BATCH, *runners[0].info.input_size))
    x = x.astype(np.float32)
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    for runner in runners:  # warm-up: first-call allocations, lazy initialisation
        runner.run(x)
    for _ in range(rounds):
        for runner in runners:
            start = time.perf_counter()
            runner.run(x)
            times[runner.name].append((time.perf_counter() - start) * 1000.0)
    figures = {f"{name}_ms": float(np.median(values)) for name, values in times.items()}
    safe = runners[0].info.int8_saturation_safe or not int8_pairs_saturate()
    return {**figures, "saturation_safe": float(safe)}


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]), int(sys.argv[2]))))
