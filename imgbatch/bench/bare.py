"""The physical limit: one process per core, each decoding its share of the files and running the model
on batches, with no queue and no database. Processes start (and warm up) before a common start line, so
only steady-state work is timed."""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# "pillow": what a user would write, the reference preprocessing (Pillow decode, resize, crop);
# "exact", "fast": the pipeline's decoders (IMGBATCH_DECODE).
MODES = ("model", "pillow", "exact", "fast")
# The model-only loop cycles through this many decoded tensors per process instead of holding them all.
MODEL_ONLY_POOL = 64


@dataclass(frozen=True)
class LoopResult:
    mode: str  # "model" (inference only), "pillow" (reference decode + model), "exact"/"fast" (pipeline's)
    processes: int
    ort_threads: int
    batch_size: int
    images: int
    errors: int
    seconds: float
    images_per_s: float
    decode_ms_per_image: float  # per process, averaged over the images it decoded
    infer_ms_per_image: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bare_loop(
    model: Path, paths: list[Path], mode: str, processes: int, batch_size: int, cpus: int
) -> LoopResult:
    """Images/s of ``processes`` processes splitting ``paths``; ORT threads = cpus // processes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    threads = max(1, cpus // processes)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited onnxruntime state
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    shares = [[str(p) for p in paths[i::processes]] for i in range(processes)]
    procs = [
        ctx.Process(target=_child, args=(str(model), share, mode, batch_size, threads, barrier, results))
        for share in shares
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=300)  # every child has loaded its session and warmed up
        outcomes = [results.get(timeout=3600) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    failed = [o for o in outcomes if "error" in o]
    if failed:
        raise RuntimeError(f"bare loop process failed: {failed[0]['error']}")
    start = min(o["start"] for o in outcomes)
    end = max(o["end"] for o in outcomes)
    images = sum(o["images"] for o in outcomes)
    seconds = max(end - start, 1e-9)
    return LoopResult(
        mode=mode,
        processes=processes,
        ort_threads=threads,
        batch_size=batch_size,
        images=images,
        errors=sum(o["errors"] for o in outcomes),
        seconds=seconds,
        images_per_s=images / seconds,
        decode_ms_per_image=_weighted(outcomes, "decode_s"),
        infer_ms_per_image=_weighted(outcomes, "infer_s"),
    )


def _weighted(outcomes: list[dict[str, Any]], key: str) -> float:
    images = sum(o["images"] for o in outcomes)
    return 1000.0 * sum(o[key] for o in outcomes) / images if images else 0.0


def _child(
    model: str,
    paths: list[str],
    mode: str,
    batch_size: int,
    threads: int,
    barrier: Any,
    results: Any,
) -> None:
    try:
        results.put(_run_share(model, paths, mode, batch_size, threads, barrier))
    except Exception as exc:  # reported to the parent, which raises
        barrier.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _run_share(
    model: str, paths: list[str], mode: str, batch_size: int, threads: int, barrier: Any
) -> dict[str, Any]:
    from imgbatch.core import preprocess
    from imgbatch.core.modelfile import open_session

    session, info = open_session(Path(model), threads)
    spec = info.preprocess
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def decode(path: str) -> np.ndarray:
        if mode == "pillow":
            return preprocess.load_reference_tensor(path, spec)
        return preprocess.load_tensor(path, spec, decode="fast" if mode == "fast" else "exact")

    pool: list[np.ndarray] = []
    if mode == "model":
        for path in paths:
            try:
                pool.append(decode(path))
            except preprocess.ImageDecodeError:
                continue
            if len(pool) >= MODEL_ONLY_POOL:
                break
        if not pool:
            raise RuntimeError("no decodable image for the model-only loop")
    warm = np.stack([pool[0]] * batch_size) if pool else np.stack([decode(paths[0])] * batch_size)
    session.run([output_name], {input_name: warm})
    barrier.wait(timeout=300)

    start = time.time()
    decode_s = infer_s = 0.0
    images = errors = 0
    for first in range(0, len(paths), batch_size):
        chunk = paths[first : first + batch_size]
        t0 = time.perf_counter()
        if mode == "model":
            rows = [pool[(first + i) % len(pool)] for i in range(len(chunk))]
        else:
            rows = []
            for path in chunk:
                try:
                    rows.append(decode(path))
                except preprocess.ImageDecodeError:
                    errors += 1
        t1 = time.perf_counter()
        if rows:
            session.run([output_name], {input_name: np.stack(rows)})
        t2 = time.perf_counter()
        decode_s += t1 - t0
        infer_s += t2 - t1
        images += len(rows)
    return {
        "start": start,
        "end": time.time(),
        "images": images,
        "errors": errors,
        "decode_s": decode_s,
        "infer_s": infer_s,
    }
