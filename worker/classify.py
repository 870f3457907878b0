"""Decode -> preprocess -> one ORT call per batch. Plain code: no Celery, no database."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgbatch.core.modelfile import ModelInfo, open_session
from imgbatch.core.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, load_tensor

TOP_K = 5
# Images per onnxruntime call. A task message may carry more paths (fewer Redis round trips, fewer
# Celery dispatches, fewer DB transactions per image); they are decoded and run in chunks of this
# size, so memory (ORT arena, tensors) stays that of batch 8 whatever the message size, and
# inference per image is as fast as at batch 32 on this model.
INFER_BATCH = 8


@dataclass
class Prediction:
    """One image's outcome: top-k on success, or an error reason."""

    path: str
    decode_ms: float
    infer_ms: float = 0.0
    top: list[tuple[int, str, float]] | None = None
    error: str | None = None


class Classifier:
    """Owns one onnxruntime session; the batch loop owns nothing else."""

    def __init__(
        self,
        session: Any,
        info: ModelInfo,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        infer_batch: int = INFER_BATCH,
    ) -> None:
        self.session = session
        self.info = info
        self.max_pixels = max_pixels
        self.infer_batch = max(1, infer_batch)
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    @classmethod
    def load(
        cls, model_path: Path, intra_op_threads: int, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Classifier:
        session, info = open_session(model_path, intra_op_threads)
        return cls(session, info, max_pixels)

    def classify(self, paths: list[str], reasons: dict[str, str] | None = None) -> list[Prediction]:
        """Classify a batch; `reasons` maps paths already refused (e.g. outside the job) to why.

        Decodes and runs `infer_batch` images at a time; predictions come back in the order of `paths`.
        """
        reasons = reasons or {}
        preds: list[Prediction] = []
        rows: list[np.ndarray] = []
        ok: list[Prediction] = []
        for path in paths:
            start = time.perf_counter()
            if path in reasons:
                preds.append(Prediction(path, 0.0, error=reasons[path]))
                continue
            try:
                tensor = load_tensor(path, self.info.preprocess, self.max_pixels)
            except ImageDecodeError as exc:
                preds.append(Prediction(path, _ms_since(start), error=str(exc)))
                continue
            except MemoryError:
                preds.append(Prediction(path, _ms_since(start), error="out of memory while decoding"))
                continue
            pred = Prediction(path, _ms_since(start))
            preds.append(pred)
            ok.append(pred)
            rows.append(tensor)
            if len(rows) == self.infer_batch:
                self._infer(rows, ok)
                rows, ok = [], []
        if rows:
            self._infer(rows, ok)
        return preds

    def _infer(self, rows: list[np.ndarray], preds: list[Prediction]) -> None:
        start = time.perf_counter()
        logits = self.session.run([self.output_name], {self.input_name: np.stack(rows)})[0]
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
            out.append([(int(i), labels[i] if i < len(labels) else str(i), float(row[i])) for i in best])
        return out


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
