"""Inference runtimes: a model file loaded once, run on float32 NCHW batches, logits (or
probabilities, as the contract says) out.

onnxruntime is the reference and the fallback (``imgbatch.core.modelfile``'s session). OpenVINO is the
second runtime: the same ONNX file, read by OpenVINO's ONNX frontend, compiled for the CPU. Both check
the same contract (metadata, one NCHW input, as many outputs as labels) and identify the model by the
sha256 of the bytes they were made from.

Which of them ``auto`` picks, and the cache of that measurement: ``imgbatch.core.runtime_choice``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from imgbatch.core.cpus import cpu_signature
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
# Pinned to f32: on 750 ImageNet photos bf16 lowered INT8's top-1 agreement with FP32 from 98.9 % to
# 97.9 % (docs/quantization.md, "Runtimes"); `auto` then measures whether f32 OpenVINO is still faster.
OPENVINO_PRECISION = "f32"

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
        return run_one_by_one(self.request, batch)


def run_one_by_one(request: Any, batch: np.ndarray) -> np.ndarray:
    """A batch through a model compiled for batch 1, an image at a time. Why not one call: compiled for
    a dynamic batch, OpenVINO's CPU plugin took ~25 MB more of a worker's RSS at batch 8 (165 vs 140 MB
    peak, EfficientNet-Lite0 INT8), which the 200 MB budget of a worker has no room for; it costs ~7 %
    of OpenVINO's speed (188 vs 202 images/s, f32, one thread, interleaved)."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    # share_outputs=False (the default): copies, not views the next call overwrites.
    return np.concatenate([np.asarray(request.infer({0: batch[i : i + 1]})[0]) for i in range(len(batch))])


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
    path: Path,
    threads: int = 1,
    data: bytes | None = None,
    precision: str = OPENVINO_PRECISION,
    cache_dir: Path | None = None,
) -> OpenVinoRunner:
    """The model compiled by OpenVINO for this CPU. Errors (OpenVINO missing, a model it cannot read
    or compile, a broken contract) are ModelFileError.

    ``cache_dir`` (the settings' cache dir): where the compiled model is kept, keyed by the file's
    sha256, the CPU, OpenVINO's version, the precision and the threads. A worker that finds it imports
    it without OpenVINO's ONNX frontend and graph passes: measured 26 MB less peak RSS (114 vs 140 MB)."""
    path = Path(path)
    data = read_model_bytes(path) if data is None else data
    sha256 = hashlib.sha256(data).hexdigest()
    blob = compiled_path(cache_dir, sha256, threads, precision)
    cached = import_compiled(blob, threads, precision) if blob else None
    if cached is not None:
        compiled, meta = cached
        info = ModelInfo.from_metadata(path, meta)
    else:
        compiled, meta, info = _compile_checked(path, data, threads, precision)
        if blob is not None:
            export_compiled(blob, compiled, meta)
    release_free_memory()
    return OpenVinoRunner(compiled, replace(info, sha256=sha256), precision)


def _compile_checked(
    path: Path, data: bytes, threads: int, precision: str
) -> tuple[Any, dict[str, str], ModelInfo]:
    """Read the ONNX bytes with OpenVINO, check the contract, compile for batch 1."""
    model = read_openvino(path, data)
    meta = _openvino_metadata(model)
    info = ModelInfo.from_metadata(path, meta)
    check_input_shapes(path, [list(i.get_partial_shape()) for i in model.inputs])
    batch_of_one(model, path)
    classes = model.outputs[0].get_partial_shape()[-1]
    if classes.is_static:
        check_class_count(info, classes.get_length())
    compiled = compile_openvino(path, model, threads, precision)
    if not classes.is_static:
        request = compiled.create_infer_request()
        check_class_count(
            info, run_one_by_one(request, np.zeros((1, *info.input_size), np.float32)).shape[-1]
        )
    return compiled, meta, info


def compiled_path(cache_dir: Path | None, sha256: str, threads: int, precision: str) -> Path | None:
    if cache_dir is None:
        return None
    key = f"{sha256} | {cpu_signature()} | openvino {openvino_version()} {precision} | {threads} threads"
    return cache_dir / "openvino" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.blob"


def import_compiled(blob: Path, threads: int, precision: str) -> tuple[Any, dict[str, str]] | None:
    """The compiled model and its metadata from the cache; None if missing or unreadable (then it is
    compiled again and the cache rewritten)."""
    try:
        meta = json.loads(blob.with_suffix(".json").read_text())
        data = blob.read_bytes()
        compiled = _openvino_core().import_model(io.BytesIO(data), "CPU", _compile_config(threads, precision))
    except Exception as exc:  # a missing file, a blob of another OpenVINO build: compile instead
        if blob.exists():
            log.info("compiled model cache %s not used: %s", blob, first_line(exc))
        return None
    return compiled, {str(k): str(v) for k, v in meta.items()}


def export_compiled(blob: Path, compiled: Any, meta: dict[str, str]) -> None:
    """Keep the compiled model (and the metadata it was checked with) for the next process; atomic."""
    try:
        blob.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        compiled.export_model(buffer)
        for target, content in (
            (blob.with_suffix(".json"), json.dumps(meta).encode()),
            (blob, buffer.getvalue()),
        ):
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, target)
    except Exception as exc:
        log.warning("cannot cache the compiled model in %s: %s", blob.parent, first_line(exc))


def release_free_memory() -> None:
    """Give the heap that reading and compiling a model freed back to the OS (glibc keeps it otherwise:
    measured ~12 MB of a worker's RSS after OpenVINO compiled EfficientNet-Lite0). No-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def read_openvino(path: Path, data: bytes) -> Any:
    """An ``openvino.Model`` of the ONNX bytes (``path``: for messages)."""
    try:
        import openvino  # noqa: F401 - a missing or broken wheel fails here, in one line
    except ImportError as exc:
        raise ModelFileError(f"runtime openvino is not available: {first_line(exc)}") from exc
    try:
        return _openvino_core().read_model(io.BytesIO(data))
    except Exception as exc:  # OpenVINO raises its own exception types
        raise ModelFileError(f"cannot load model {path} with openvino: {first_line(exc)}") from exc


def _compile_config(threads: int, precision: str) -> dict[str, Any]:
    return {
        "INFERENCE_NUM_THREADS": max(1, threads),
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        # Each worker process compiles its own model; pinned threads of N processes that do not know
        # of each other could share one core while another idles. The OS spreads them instead.
        "ENABLE_CPU_PINNING": False,
    }


@functools.lru_cache(maxsize=1)
def _openvino_core() -> Any:
    """One OpenVINO Core per process: it holds the loaded CPU plugin."""
    import openvino as ov

    return ov.Core()


def compile_openvino(path: Path, model: Any, threads: int, precision: str = OPENVINO_PRECISION) -> Any:
    """``model`` compiled for this CPU as workers run it (``path``: for messages)."""
    try:
        return _openvino_core().compile_model(model, "CPU", _compile_config(threads, precision))
    except Exception as exc:
        raise ModelFileError(f"cannot compile model {path} with openvino: {first_line(exc)}") from exc


def _openvino_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO's ONNX frontend keeps under rt_info "framework"."""
    if not model.has_rt_info(["framework"]):
        return {}
    framework = model.get_rt_info()["framework"]
    return {str(key): model.get_rt_info(["framework", key]).astype(str) for key in framework}


def batch_of_one(model: Any, path: Path) -> None:
    """Reshape the model's input to one image (``run_one_by_one`` says why)."""
    shape = model.inputs[0].get_partial_shape()
    try:
        model.reshape([1, *[d.get_length() for d in list(shape)[1:]]])
    except Exception as exc:
        raise ModelFileError(
            f"{path}: cannot be reshaped to batch 1 for openvino: {first_line(exc)}"
        ) from exc


def require_runtime(choice: str) -> None:
    """Fail fast with one line: an unknown runtime, or an explicitly asked one that does not import."""
    if choice not in ("auto", *RUNTIMES):
        raise UserError(f"unknown runtime {choice!r}: expected auto, {' or '.join(RUNTIMES)}")
    if choice == "openvino":
        # Found, not imported: a worker's main process forks its pool processes, which would all
        # carry what it imported (measured: OpenVINO's import alone is ~28 MB of RSS).
        try:
            found = importlib.util.find_spec("openvino") is not None
        except (ImportError, ValueError) as exc:
            raise ModelFileError(f"runtime openvino is not available: {first_line(exc)}") from exc
        if not found:
            raise ModelFileError("runtime openvino is not available: openvino is not installed")
