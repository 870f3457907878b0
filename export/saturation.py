"""Weight scales that cannot saturate ORT's u8s8 kernels on x86 CPUs without VNNI.

On AVX2 (and AVX-512 without VNNI) ONNX Runtime multiplies uint8 activations by int8 weights with
``vpmaddubsw``: two neighbouring products along the reduction axis K are added into a *saturating*
16-bit lane before they reach 32 bits. With 8-bit weights and activations near 255 those sums clip
(EfficientNet-Lite0 on an AVX2-only EPYC, MinMax: 73.8% top-1 agreement with FP32, 92.5% with the
scales below; onnxruntime#6004, #5849, #14642). Opposite-sign pairs never clip (|sum| <= 255 * 127).
A same-sign pair whose codes add up to at most 128 cannot clip either (255 * 128 = 32640 < 32767),
so each output channel gets the scale ``bound / 127`` where ``bound`` is the largest same-sign pair
sum of its float weights (and at least its largest weight), instead of ``max|w| / 127``:

* 1x1 convs and Gemm: K is the input-channel order, the pairs are (0, 1), (2, 3), ...;
* other convs (their K order depends on the kernel ORT picks): the two largest same-sign weights of
  the channel, a bound for any pairing;
* depthwise convs keep the plain scale: their kernel sums in 32 bits.

That costs a fraction of a bit (EfficientNet-Lite0: bound / max|w| is 1.24 for the median channel,
1.65 at the 95th percentile) where ORT's own remedy, ``reduce_range``, costs a whole bit everywhere.
A model quantized this way computes the same on every CPU; the test suite holds ORT's fast and exact
(``session.x64quantprecision``) kernels to the same logits on photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class WeightRange:
    axis: int  # ORT's per-channel axis of the weight tensor
    bound: np.ndarray  # per output channel: symmetric range, scale = bound / 127


def _pair_bound(rows: np.ndarray) -> np.ndarray:
    """rows: (channels, K) in K order -> per channel max(largest |w|, largest same-sign pair sum)."""
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), rows.dtype)], axis=1)
    a, b = rows[:, 0::2], rows[:, 1::2]
    same = np.sign(a) * np.sign(b) > 0
    pair = np.where(same, np.abs(a + b), 0.0).max(axis=1)
    return np.maximum(pair, np.abs(rows).max(axis=1))


def _top2_bound(rows: np.ndarray) -> np.ndarray:
    """Per channel: the two largest same-sign magnitudes added (any pairing stays below it)."""
    pos = -np.sort(-np.where(rows > 0, rows, 0.0), axis=1)
    neg = -np.sort(-np.where(rows < 0, -rows, 0.0), axis=1)
    top = lambda s: s[:, 0] + (s[:, 1] if s.shape[1] > 1 else 0.0)  # noqa: E731
    return np.maximum(top(pos), top(neg))


def weight_ranges(model_path: Path, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, WeightRange]:
    """Saturation-safe per-channel ranges of the quantizable weights, by initializer name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {init.name: init for init in model.graph.initializer}
    ranges: dict[str, WeightRange] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.name in skip:
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "Conv":
            group = attrs.get("group", 1)
            if group > 1:
                continue  # depthwise/grouped: ORT's depthwise kernel does not pair in 16 bits
            rows = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)  # (M, kh * kw * Cin)
            bound = _pair_bound(rows) if w.shape[2:] == (1, 1) else _top2_bound(rows)
            ranges[node.input[1]] = WeightRange(0, bound)
        elif not attrs.get("transA", 0):
            trans_b = attrs.get("transB", 0)
            rows = w if trans_b else w.T  # (M, K)
            ranges[node.input[1]] = WeightRange(0 if trans_b else 1, _pair_bound(rows))
    return ranges


def tensor_overrides(ranges: dict[str, WeightRange]) -> dict[str, list[dict[str, object]]]:
    """``TensorQuantOverrides`` for ORT's quantize_static: one (rmin, rmax) per output channel."""
    overrides: dict[str, list[dict[str, object]]] = {}
    for name, r in ranges.items():
        per_channel: list[dict[str, object]] = [{"rmin": -float(b), "rmax": float(b)} for b in r.bound]
        per_channel[0]["axis"] = r.axis  # ORT reads the axis from the first channel's entry
        overrides[name] = per_channel
    return overrides
