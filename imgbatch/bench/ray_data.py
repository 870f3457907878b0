"""The same job on Ray Data, the tool a user might pick instead: `map_batches` over the file paths with
one actor per worker process, each holding the workers' own ``Classifier`` (one onnxruntime session,
the pipeline's decode), ``batch_size`` paths per call as in a task message, results streamed back to
the driver (our pipeline also writes them to a database).

Ray's start-up (the local cluster and the actors) is a fixed cost that would weigh on a short job, so
the figure is the steady-state rate: a small job and the full job run on the same cluster, and the rate
is (full - small images) / (full - small seconds). The plain full-job rate is reported beside it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from imgbatch.core.errors import UserError


class _Classify:
    """A Ray Data actor around the very ``Classifier`` a Celery worker process uses (decode, ORT calls of
    worker.classify.INFER_BATCH images, top-5): only the queue and the database are left out."""

    model = ""  # set on a subclass per run, so the actor takes no constructor arguments
    threads = 1
    decode = "exact"

    def __init__(self) -> None:
        from imgbatch.worker.classify import Classifier

        # Ray Data with onnxruntime: the comparison the issue names (what a user would pick).
        self.classifier = Classifier.load(
            Path(self.model),
            self.threads,
            decode="fast" if self.decode == "fast" else "exact",
            runtime="onnxruntime",
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        preds = self.classifier.classify([str(p) for p in batch["path"]])
        labels = np.array([p.top[0][0] if p.top else -1 for p in preds], dtype=np.int64)
        return {"path": batch["path"], "label": labels}


def require_ray() -> Any:
    """The ray module, or one readable error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UserError("--ray needs Ray Data: pip install 'imgbatch[ray]'") from exc
    return ray


def ray_data_run(
    model: Path, paths: list[Path], actors: int, batch_size: int, cpus: int, decode: str = "exact"
) -> dict[str, Any]:
    """Images/s of Ray Data classifying ``paths`` with ``actors`` actors of cpus // actors ORT threads."""
    ray = require_ray()
    threads = max(1, cpus // actors)
    small = paths[: min(max(actors * batch_size * 8, 64), len(paths) // 4)]
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        actor = type("Classify", (_Classify,), {"model": str(model), "threads": threads, "decode": decode})
        ray.data.DataContext.get_current().enable_progress_bars = False

        def run(items: list[Path]) -> tuple[int, int, float]:
            # Ray Data's console handler prints every execution at INFO (its log file keeps them).
            for handler in logging.getLogger("ray.data").handlers:
                if handler.get_name() == "console":
                    handler.setLevel(logging.ERROR)
            ds = ray.data.from_items([{"path": str(p)} for p in items]).map_batches(
                actor,
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus / actors,
            )
            start = time.perf_counter()
            done = labelled = 0
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                done += len(out["label"])
                labelled += int(np.count_nonzero(out["label"] >= 0))
            return done, labelled, time.perf_counter() - start

        small_n, _, small_s = run(small) if small else (0, 0, 0.0)
        full_n, labelled, full_s = run(paths)
    finally:
        ray.shutdown()
    steady = (full_n - small_n) / (full_s - small_s) if small_n and full_s > small_s else None
    with_startup = full_n / full_s if full_s > 0 else 0.0
    return {
        "actors": actors,
        "ort_threads": threads,
        "batch_size": batch_size,
        "decode": decode,
        "images": full_n,
        "classified": labelled,
        "seconds": full_s,
        "images_per_s": steady if steady is not None else with_startup,
        "steady_state": steady is not None,
        "images_per_s_with_startup": with_startup,
        "ray": ray.__version__,
    }
