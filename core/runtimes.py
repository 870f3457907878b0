"""Inference runtimes: a model file loaded once, run on float32 NCHW batches, logits (or
probabilities, as the contract says) out.

onnxruntime is the reference and the fallback (``imgbatch.core.modelfile``'s session). OpenVINO is the
second runtime: the same ONNX file, read by OpenVINO's ONNX frontend, compiled for the CPU. Both check
the same contract (metadata, one NCHW input, as many outputs as labels) and identify the model by the
sha256 of the bytes they were made from.

``auto`` picks OpenVINO when it imports, compiles the model and is measured faster than onnxruntime
for that model on this CPU at the workers' batch and thread count, else onnxruntime. The measurement
(a short interleaved probe in a child process, so no worker carries both runtimes) is made once per
(model sha256, CPU, threads, runtime versions) and cached in ``<cache dir>/runtime-choice.json``
(``IMGBATCH_CACHE_DIR``, default ``~/.cache/imgbatch``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import importlib.util
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
# Pinned to f32: on 750 ImageNet photos bf16 lowered INT8's top-1 agreement with FP32 from 98.9 % to
# 97.9 % (docs/quantization.md, "Runtimes"); `auto` then measures whether f32 OpenVINO is still faster.
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
        return open_openvino(path, threads, data, cache_dir=cache_dir)
    require_runtime(choice)
    picked, why = auto_choice(path, data, threads, cache_dir)
    if picked == "openvino":
        try:
            return open_openvino(path, threads, data, cache_dir=cache_dir)
        except ModelFileError as exc:
            why = str(exc)
    log.info("runtime auto: onnxruntime for %s (%s)", path.name, why)
    return open_onnxruntime(path, threads, data)


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


def check_model_in_child(path: Path, threads: int, cache_dir: Path | None) -> None:
    """The model's contract checked by OpenVINO in a fresh interpreter, which leaves the compiled model
    in ``cache_dir`` for the pool processes: a worker's main process that will fork OpenVINO pool
    processes must hold neither runtime (~43 MB of onnxruntime's RSS every pool process would carry)."""
    where = [] if cache_dir is None else [str(cache_dir)]
    try:
        _in_child("check", str(path), str(threads), *where)
    except RuntimeError as exc:
        raise ModelFileError(
            f"cannot check model {path}: {exc}" if str(exc).startswith("exit code") else str(exc)
        ) from None


def _in_child(*args: str) -> str:
    """Run this module's command line in a fresh interpreter; its stdout, or RuntimeError with the last
    line of its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "imgbatch.core.runtimes", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {done.returncode}")
    return done.stdout


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
    figures = json.loads(_in_child(str(path), str(threads)).strip().splitlines()[-1])
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


def _main(args: list[str]) -> int:
    """``check PATH THREADS [CACHE_DIR]``: the model on OpenVINO, its error as the last line of stderr;
    ``PATH THREADS``: the probe."""
    if args[0] == "check":
        try:
            open_openvino(Path(args[1]), int(args[2]), cache_dir=Path(args[3]) if args[3:] else None)
        except ModelFileError as exc:
            print(exc, file=sys.stderr)
            return 3
        return 0
    print(json.dumps(probe(Path(args[0]), int(args[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
