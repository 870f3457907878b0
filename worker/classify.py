"""Decode -> preprocess -> one runtime call per batch. Plain code: no Celery, no database, no Redis.

Each image is decoded inside a guard the caller supplies (the worker records a marker in Redis
around it) and under a per-image timer: a read or decode that takes longer than `timeout_s` is
interrupted (SIGALRM) and becomes that image's error. Whatever one image's decode raises is that
image's outcome, never the batch's.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgbatch.core.files import DEFAULT_MAX_FILE_BYTES, TransientFileError
from imgbatch.core.preprocess import DEFAULT_MAX_PIXELS, Decoder, ImageDecodeError, decode_tensor
from imgbatch.core.runtime_choice import open_runtime
from imgbatch.core.runtimes import ModelRunner, RuntimeChoice
from imgbatch.core.stores import read_image

TOP_K = 5
# Images per runtime call. A task message may carry more paths (fewer Redis round trips, fewer
# Celery dispatches, fewer DB transactions per image); they are decoded and run in chunks of this
# size, so memory (runtime arena, tensors) stays that of batch 8 whatever the message size, and
# inference per image is as fast as at batch 32 on this model.
INFER_BATCH = 8

Guard = Callable[[int], contextlib.AbstractContextManager[None]]


class ImageTimeout(BaseException):
    """Raised by SIGALRM in the middle of a read or decode (BaseException: no `except Exception` in a
    decoder swallows it)."""


@dataclass
class Prediction:
    """One image's outcome: top-k on success, an error reason (a property of the file), a transient
    reason (of its environment: try again later), or `unfinished` (the batch was stopped first)."""

    path: str
    decode_ms: float
    infer_ms: float = 0.0
    top: list[tuple[int, str, float]] | None = None
    error: str | None = None
    transient: str | None = None
    unfinished: bool = False


@contextlib.contextmanager
def image_timer(seconds: float) -> Iterator[None]:
    """Interrupt what runs inside after `seconds` with ImageTimeout. Signals reach the main thread only:
    elsewhere (a Ray actor's thread, in `imgbatch bench --ray`) nothing is timed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(_signum: int, _frame: Any) -> None:
        raise ImageTimeout()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _no_guard(_index: int) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class Classifier:
    """Owns one model runner (onnxruntime or OpenVINO); the batch loop owns nothing else."""

    def __init__(
        self,
        runner: ModelRunner,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        infer_batch: int = INFER_BATCH,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        timeout_s: float = 60.0,
        decode: Decoder = "exact",
    ) -> None:
        self.runner = runner
        self.info = runner.info
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.decode_with: Decoder = decode
        self.infer_batch = max(1, infer_batch)

    @classmethod
    def load(
        cls,
        model_path: Path,
        intra_op_threads: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        timeout_s: float = 60.0,
        decode: Decoder = "exact",
        runtime: RuntimeChoice = "onnxruntime",
        cache_dir: Path | None = None,
    ) -> Classifier:
        """``runtime`` and ``cache_dir``: as ``imgbatch.core.runtime_choice.open_runtime`` takes them (workers
        pass their settings'; the default is the reference runtime, which needs no measurement)."""
        runner = open_runtime(model_path, intra_op_threads, runtime, cache_dir)
        return cls(runner, max_pixels, max_bytes=max_bytes, timeout_s=timeout_s, decode=decode)

    def decode(self, path: str, size_bytes: int | None = None) -> np.ndarray | Prediction:
        """The model input of one file or object (`size_bytes`: from its listing), or its outcome when
        it has none."""
        start = time.perf_counter()
        try:
            with image_timer(self.timeout_s):
                data = read_image(path, size_bytes, self.max_bytes)
                return decode_tensor(data, self.info.preprocess, self.max_pixels, self.decode_with)
        except ImageDecodeError as exc:
            return Prediction(path, _ms_since(start), error=str(exc))
        except ImageTimeout:
            return Prediction(path, _ms_since(start), error=f"timed out after {self.timeout_s:g} s")
        except TransientFileError as exc:
            return Prediction(path, _ms_since(start), transient=f"I/O error: {exc}")
        except MemoryError:
            return Prediction(path, _ms_since(start), transient="out of memory while decoding")
        except RecursionError as exc:
            return Prediction(path, _ms_since(start), error=f"not a decodable image: {exc}")

    def classify(
        self,
        paths: list[str],
        reasons: dict[str, str] | None = None,
        guard: Guard = _no_guard,
        stop_on: tuple[type[BaseException], ...] = (),
        sizes: dict[str, int | None] | None = None,
    ) -> list[Prediction]:
        """Classify a batch; `reasons` maps paths already refused (e.g. outside the job) to why,
        `sizes` object URLs to the size their listing gave.

        Decodes and runs `infer_batch` images at a time; predictions come back in the order of
        `paths`. An exception of a `stop_on` type (Celery's soft time limit) stops the batch: what
        was decoded is still classified, the rest comes back `unfinished`.
        """
        reasons = reasons or {}
        preds: list[Prediction] = []
        rows: list[np.ndarray] = []
        ok: list[Prediction] = []
        for index, path in enumerate(paths):
            if path in reasons:
                preds.append(Prediction(path, 0.0, error=reasons[path]))
                continue
            try:
                with guard(index):
                    outcome = self._decode_guarded(path, stop_on, (sizes or {}).get(path))
            except stop_on:
                preds += [Prediction(p, 0.0, unfinished=True) for p in paths[index:]]
                break
            if isinstance(outcome, Prediction):
                preds.append(outcome)
                continue
            pred = Prediction(path, outcome[1])
            preds.append(pred)
            ok.append(pred)
            rows.append(outcome[0])
            if len(rows) == self.infer_batch:
                self._infer(rows, ok)
                rows, ok = [], []
        if rows:
            self._infer(rows, ok)
        return preds

    def _decode_guarded(
        self, path: str, stop_on: tuple[type[BaseException], ...], size_bytes: int | None = None
    ) -> tuple[np.ndarray, float] | Prediction:
        start = time.perf_counter()
        try:
            outcome = self.decode(path, size_bytes)
        except stop_on:
            raise
        except Exception as exc:  # anything else a decoder raises is this image's error, not the batch's
            return Prediction(path, _ms_since(start), error=f"{type(exc).__name__}: {exc}")
        return outcome if isinstance(outcome, Prediction) else (outcome, _ms_since(start))

    def _infer(self, rows: list[np.ndarray], preds: list[Prediction]) -> None:
        start = time.perf_counter()
        logits = self.runner.run(np.stack(rows))
        per_image_ms = _ms_since(start) / len(rows)
        for pred, top in zip(preds, self._top_k(logits), strict=True):
            pred.infer_ms = per_image_ms
            pred.top = top

    def _top_k(self, output: np.ndarray) -> list[list[tuple[int, str, float]]]:
        scores = output.astype(np.float32)
        if self.info.output == "logits":
            scores = scores - scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
        k = min(TOP_K, scores.shape[1])
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out = []
        labels = self.info.labels
        for row, cand in zip(scores, idx, strict=True):
            best = cand[np.argsort(-row[cand])]
            out.append([(int(i), labels[i], float(row[i])) for i in best])
        return out


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
