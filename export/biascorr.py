"""Bias correction for INT8 weights: keep each layer's mean output where FP32 has it.

Rounding weights to INT8 adds an error ``dW`` whose effect on a layer's output has a non-zero mean,
``dW . E[x]``, which depthwise convolutions (few weights per channel) feel most and which adds up
through the network. The corrected bias ``b - dW . E[x]`` removes it; ``E[x]`` (per input channel)
is measured on the calibration photos with the FP32 graph. ``dW`` is computed exactly as ORT
quantizes weights here: symmetric INT8 per output channel, scale = max|w| / 127 or the given
(saturation-safe) bound / 127, or the already rounded weights (export.rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from imgbatch.core.preprocess import PreprocessSpec


def channel_mean(a: np.ndarray) -> np.ndarray:
    """Mean per channel: axis 1 of NCHW activations, the last axis of anything else."""
    return a.mean(axis=(0, 2, 3)) if a.ndim == 4 else a.reshape(-1, a.shape[-1]).mean(axis=0)  # type: ignore[no-any-return]


def _input_means(
    model_path: Path, tensors: list[str], paths: Sequence[Path], spec: PreprocessSpec, input_name: str
) -> dict[str, np.ndarray]:
    from imgbatch.export.onnx_export import tensor_batches

    sums: dict[str, np.ndarray] = {}
    count = 0
    for values in tensor_batches(model_path, tensors, paths, spec, input_name):
        for name in tensors:
            a = values[name]
            sums[name] = sums.get(name, 0) + channel_mean(a).astype(np.float64) * len(a)
        count += len(values[input_name])
    return {name: value / count for name, value in sums.items()}


def _quantized(w: np.ndarray, qmax: int = 127, bound: np.ndarray | None = None) -> np.ndarray:
    """Per-output-channel (axis 0) symmetric round trip of ``w`` to integers in [-qmax, qmax].

    ``bound``: the per-channel range (scale = bound / qmax) when it is not max|w| (export.saturation).
    """
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if bound is None else bound
    scale = np.where(flat > 0, flat / qmax, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def bias_deltas(
    model_path: Path,
    calib_paths: Sequence[Path],
    spec: PreprocessSpec,
    input_name: str = "input",
    reduce_range: bool = False,
    bounds: dict[str, np.ndarray] | None = None,
    rounded_path: Path | None = None,
) -> dict[str, np.ndarray]:
    """The mean output shift ``dW . E[x]`` of each Conv/Gemm with a bias, by node name.

    ``reduce_range``: 7-bit weights (ORT's option); ``bounds``: per-channel ranges by weight name;
    ``rounded_path``: the same graph with weights already rounded onto their INT8 grid
    (export.rounding), whose values are then the quantized weights. Each shift depends only on its
    own node and the FP32 input means, so any subset may be applied.
    """
    bounds = bounds or {}
    model = onnx.load(str(model_path))
    inits = {init.name: init for init in model.graph.initializer}
    quantized_inits = inits
    if rounded_path is not None:
        quantized_inits = {init.name: init for init in onnx.load(str(rounded_path)).graph.initializer}
    nodes = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[1] in inits and n.input[2] in inits
    ]
    means = _input_means(model_path, sorted({n.input[0] for n in nodes}), calib_paths, spec, input_name)
    qmax = 63 if reduce_range else 127
    deltas: dict[str, np.ndarray] = {}
    for node in nodes:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        w_q = numpy_helper.to_array(quantized_inits[node.input[1]]).astype(np.float64)
        bound = bounds.get(node.input[1])
        mean = means[node.input[0]]
        if node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute}
            if attrs.get("transA", 0):
                continue
            trans_b = attrs.get("transB", 0)
            w_out_in, w_q = (w, w_q) if trans_b else (w.T, w_q.T)
            deltas[node.name] = (_quantized(w_q, qmax, bound) - w_out_in) @ mean
        else:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            err = (_quantized(w_q, qmax, bound) - w).sum(axis=(2, 3))  # (out, in / group)
            cin, out_per_group = w.shape[1], w.shape[0] // group
            groups_of = np.arange(w.shape[0]) // out_per_group
            x_mean = mean.reshape(group, cin)[groups_of]  # (out, in / group)
            deltas[node.name] = (err * x_mean).sum(axis=1)
    return deltas


def apply_bias_deltas(
    model_path: Path, output_path: Path, deltas: dict[str, np.ndarray], skip: Sequence[str] = ()
) -> Path:
    """Write ``model_path`` with ``b - delta`` for every node in ``deltas`` but those in ``skip``
    (nodes left in FP32 keep their exact weights, so their bias stays)."""
    model = onnx.load(str(model_path))
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.name in deltas and node.name not in skip:
            bias = inits[node.input[2]]
            corrected = numpy_helper.to_array(bias).astype(np.float64) - deltas[node.name]
            bias.CopyFrom(numpy_helper.from_array(corrected.astype(np.float32), bias.name))
    onnx.save(model, str(output_path))
    return output_path
