"""How accurate each model is on the evaluation photos, against PyTorch eager FP32 and the labels.

Besides the per-model figures: whether the workers' decoders (exact, fast) move INT8's accuracy, and
which half of a static INT8 model's error its weights and its activations cause (export.error_sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgbatch.core.preprocess import PreprocessSpec
from imgbatch.export import error_sources
from imgbatch.export.evalset import LabelledSet
from imgbatch.export.report import Row, Runner, all_cores, fill_accuracy
from imgbatch.export.runners import (
    ONNX_FP32,
    ONNX_INT8,
    OPENVINO_FP32,
    OPENVINO_INT8,
    TORCH_FP32,
    ComparedModels,
    logits,
    onnx_runner,
)


@dataclass(frozen=True)
class Evaluation:
    rows: dict[str, Row]  # report row name -> size and accuracy figures, no latency yet
    decoders: str | None  # the exact and fast decoders against the reference (None: no INT8 model)
    error_sources: str | None  # INT8 weights vs activations (None: not a static INT8 model)


def evaluate(
    models: ComparedModels,
    photos: LabelledSet,
    x: np.ndarray,
    spec: PreprocessSpec,
    quantized_from: Path | None,
    work: Path,
) -> Evaluation:
    """Every model's accuracy on ``photos`` (``x``: their tensors).

    ``quantized_from``: the FP32 graph a static INT8 model was quantized from, to split its error in
    two (hybrid models are written to ``work``); None for other recipes.
    """
    cores = all_cores()
    reference = logits(models.runner(TORCH_FP32, cores), x)
    rows = models.rows()
    fill_accuracy(rows[TORCH_FP32], reference, reference, photos.labels)
    for name in (ONNX_FP32, OPENVINO_FP32, OPENVINO_INT8):
        if name in rows:  # INT8 on onnxruntime below: its logits serve the decoder check too
            fill_accuracy(rows[name], logits(models.runner(name, cores), x), reference, photos.labels)
    if models.int8 is None:
        return Evaluation(rows, None, None)
    int8_runner = models.runner(ONNX_INT8, cores)
    int8_logits = logits(int8_runner, x)
    fill_accuracy(rows[ONNX_INT8], int8_logits, reference, photos.labels)
    torch_runner = models.runner(TORCH_FP32, cores)
    decoders = decoder_check(photos.paths, spec, int8_logits, torch_runner, int8_runner, photos.labels)
    if quantized_from is None:
        return Evaluation(rows, decoders, None)
    figures = error_sources.measure(
        quantized_from,
        models.int8,
        work,
        lambda path: logits(onnx_runner(path, cores, models.exact_kernels), x),
        reference,
        int8_logits,
    )
    return Evaluation(rows, decoders, error_sources.describe(figures))


def decoder_check(
    paths: list[Path],
    spec: PreprocessSpec,
    int8_exact: np.ndarray,
    torch_runner: Runner,
    int8_runner: Runner,
    labels: list[int] | None,
) -> str | None:
    """Does the workers' decoder move INT8's top-1 against FP32 on the reference preprocessing?

    The rest of the report decodes the photos with the default decoder (``exact``: the reference bit
    for bit below 4x the resize); here they are also decoded by the reference itself (Pillow alone,
    full decode), for FP32's top-1, and by the ``fast`` decoder.
    ``int8_exact``: INT8 logits on the photos as decoded for the rest of the report.
    """
    from imgbatch.core import preprocess

    x_reference = np.stack([preprocess.load_reference_tensor(p, spec) for p in paths])
    reference = logits(torch_runner, x_reference).argmax(1)
    exact = int8_exact.argmax(1)
    if not preprocess.HAVE_FAST_JPEG:
        return f"INT8 top-1 agreement with FP32 (reference preprocessing) {np.mean(exact == reference):.1%}"
    x_fast = np.stack([preprocess.load_tensor(p, spec, decode="fast") for p in paths])
    fast = logits(int8_runner, x_fast).argmax(1)
    text = (
        f"INT8 top-1 agreement with FP32 on the reference preprocessing: {np.mean(exact == reference):.1%} "
        f"with the exact decoder (the default), {np.mean(fast == reference):.1%} with IMGBATCH_DECODE=fast"
    )
    if labels is not None:
        y = np.asarray(labels)
        text += (
            f"; top-1 accuracy {np.mean(exact == y):.1%} (exact) vs {np.mean(fast == y):.1%} (fast), "
            f"FP32 {np.mean(reference == y):.1%}"
        )
    return text
