"""Which runtime workers use for a model file: ``auto``'s policy, its measurement and its cache.

``auto`` picks OpenVINO when it imports, compiles the model and is measured faster than onnxruntime
for that model on this CPU at the workers' batch and thread count, else onnxruntime. The measurement
(a short interleaved probe in a child process, so no worker carries both runtimes) is made once per
(model sha256, CPU, threads, runtime versions) and cached in ``<cache dir>/runtime-choice.json``
(``IMGBATCH_CACHE_DIR``, default ``~/.cache/imgbatch``). The child process is this module's command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from imgbatch.core.cpus import cpu_signature, int8_pairs_saturate
from imgbatch.core.errors import ModelFileError
from imgbatch.core.modelfile import read_model_bytes
from imgbatch.core.runtimes import (
    OPENVINO_PRECISION,
    ModelRunner,
    RuntimeChoice,
    open_onnxruntime,
    open_openvino,
    openvino_version,
    require_runtime,
)

# The probe times batches of this many images, the workers' inference batch (worker.classify).
PROBE_BATCH = 8
PROBE_ROUNDS = 12
# OpenVINO must be at least this much faster to be picked: onnxruntime is the reference, and a tie
# within the probe's noise should not flip a machine to the other runtime.
MIN_GAIN = 1.05
CACHE_NAME = "runtime-choice.json"

log = logging.getLogger("imgbatch")


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
        [sys.executable, "-m", "imgbatch.core.runtime_choice", *args],
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
