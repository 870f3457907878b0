"""Where a static INT8 model's error comes from: its 8-bit weights or its 8-bit activations.

Two hybrids of the INT8 model and its FP32 source, run on the evaluation photos:

* *INT8 weights alone*: the FP32 graph with every quantized layer's weights and bias replaced by
  the INT8 model's, dequantized (so GPTQ rounding and bias corrections included); activations float.
* *INT8 activations alone*: the INT8 graph with every quantized layer's weights and bias put back to
  FP32; every activation Q/DQ pair stays.

When the gate refuses a model on agreement, this says what could help: if the weights alone already
lose the agreement, no choice of activation ranges will win it back, and only more layers in FP32 (or
quantization-aware training) will. Measured on EfficientNet-Lite0's default recipe (1,000 natural
photos, AMD EPYC): weights alone 98.3% top-1 agreement, KL to FP32 0.00076; activations alone 98.2%,
0.00149; the whole model 98.0%, 0.00192. Either alone is short of 98.5%: 12 of the model's 20
disagreements are photos whose two best FP32 logits lie within 0.05 of each other (2.9% of the
photos), and those flip under either kind of error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from imgbatch.export.report import kl_divergence

LAYER_OPS = ("Conv", "Gemm")


def _dequantized_params(qdq: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Node name -> (weight, bias) as the INT8 model computes them, for each layer whose weight is an
    initializer behind a DequantizeLinear (the layers the recipe quantized)."""
    inits = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    producer = {out: node for node in qdq.graph.node for out in node.output}

    def dequantized(tensor: str) -> np.ndarray | None:
        node = producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            return None
        q = inits[node.input[0]].astype(np.float64)
        scale = inits[node.input[1]].astype(np.float64)
        zero = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        if scale.ndim == 1 and q.ndim > 1:  # per channel along `axis` (ONNX default 1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = np.reshape(zero, shape) if np.ndim(zero) else zero
        return ((q - zero) * scale).astype(np.float32)

    params: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for node in qdq.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        weight = dequantized(node.input[1])
        if weight is not None:
            bias = dequantized(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            params[node.name] = (weight, bias)
    return params


def int8_weights_alone(fp32_prepped: Path, int8: Path, output: Path) -> Path:
    """The FP32 graph (``fp32_prepped``: the one the INT8 model was quantized from, same node names)
    with the INT8 model's dequantized weights and biases."""
    model = onnx.load(str(fp32_prepped))
    params = _dequantized_params(onnx.load(str(int8)))
    by_name = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in params:
            continue
        weight, bias = params[node.name]
        by_name[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
        if bias is not None and len(node.input) > 2 and node.input[2] in by_name:
            by_name[node.input[2]].CopyFrom(numpy_helper.from_array(bias, node.input[2]))
    onnx.save(model, str(output))
    return output


def int8_activations_alone(fp32_prepped: Path, int8: Path, output: Path) -> Path:
    """The INT8 graph with each quantized layer's weight and bias back to FP32 (the DequantizeLinear
    nodes that fed them are dropped; sessions must keep ORT from re-quantizing float weights between
    Q/DQ pairs: ``imgbatch.core.modelfile.inference_session`` does)."""
    source = onnx.load(str(fp32_prepped))
    fp32_inits = {init.name: init for init in source.graph.initializer}
    fp32_inputs = {node.name: list(node.input) for node in source.graph.node if node.op_type in LAYER_OPS}
    model = onnx.load(str(int8))
    quantized = _dequantized_params(model)
    for node in model.graph.node:
        if node.name not in quantized or node.name not in fp32_inputs:
            continue
        for slot in (1, 2):
            if slot < len(node.input) and slot < len(fp32_inputs[node.name]) and node.input[slot]:
                original = fp32_inits[fp32_inputs[node.name][slot]]
                name = f"{node.name}.fp32_{'weight' if slot == 1 else 'bias'}"
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(original), name))
                node.input[slot] = name
    # Drop what no longer feeds anything: the weight/bias DequantizeLinear nodes and their inputs.
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [
        n for n in model.graph.node if n.op_type != "DequantizeLinear" or any(o in used for o in n.output)
    ]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {name for node in keep for name in node.input}
    inits = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    onnx.save(model, str(output))
    return output


def measure(
    fp32_prepped: Path,
    int8: Path,
    work: Path,
    logits_of: Callable[[Path], np.ndarray],
    reference: np.ndarray,
    int8_logits: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Top-1 agreement and KL to ``reference`` (FP32 logits) of the two hybrids and of the model
    itself (``int8_logits``); ``logits_of(path)`` runs a model on the evaluation photos."""
    hybrids = {
        "weights alone": logits_of(int8_weights_alone(fp32_prepped, int8, work / "int8_weights.onnx")),
        "activations alone": logits_of(int8_activations_alone(fp32_prepped, int8, work / "int8_acts.onnx")),
        "both": int8_logits,
    }
    top1 = reference.argmax(1)
    return {
        name: {
            "top1_agreement": float(np.mean(logits.argmax(1) == top1)),
            "kl": round(kl_divergence(reference, logits), 6),
        }
        for name, logits in hybrids.items()
    }


def describe(figures: dict[str, dict[str, float]]) -> str:
    def part(name: str, what: str) -> str:
        f = figures[name]
        return f"{what} {f['top1_agreement']:.1%} top-1 agreement, KL to FP32 {f['kl']:.5f}"

    return (
        f"{part('weights alone', 'INT8 weights alone (float activations)')}; "
        f"{part('activations alone', 'INT8 activations alone (FP32 weights)')}; "
        f"{part('both', 'both (this model)')}"
    )
