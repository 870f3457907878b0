"""PyTorch -> FP32 ONNX, and the parity check that proves the file computes what torch computes.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is used: its onnxscript optimizer
folds BatchNorm into Conv and the static TF padding into Conv ``pads``, leaving a graph of only
Conv/Clip/Add/ReduceMean/Reshape/Gemm. The legacy TorchScript exporter emits a
Constant/Slice/Concat/Pad subgraph per stride-2 conv, which ORT's quantizer handles less cleanly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from imgbatch.core.errors import UserError
from imgbatch.core.modelfile import inference_session
from imgbatch.core.preprocess import PreprocessSpec, load_tensor

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
# FP32 ORT and torch differ only by summation order; on ~10-magnitude logits that is ~1e-5.
# 1e-3 leaves room for other CPUs / MLAS kernels while still catching any real graph error.
PARITY_ATOL = 1e-3


class ParityError(UserError):
    """The exported ONNX model does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff: float
    top1_agree: int
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.top1_agree == self.images

    def describe(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_diff:.1e} (tolerance {self.atol:.0e}), "
            f"top-1 equal on {self.top1_agree}/{self.images} photos"
        )


def _strip_node_metadata(model: onnx.ModelProto) -> None:
    # The dynamo exporter records stack traces with absolute source paths on every node; drop them
    # so the file does not leak the build machine's paths and the graph hash is reproducible.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def export_fp32(model: torch.nn.Module, path: Path, image_size: int = 224, opset: int = OPSET) -> Path:
    """Export ``model`` to a single-file FP32 ONNX at ``path`` with a dynamic batch axis; checked."""
    model = model.eval()
    example = (torch.zeros(2, 3, image_size, image_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    # The exporter logs one warning per torchvision op it cannot register when torchvision is
    # absent; irrelevant to this model and alarming in a CLI.
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter, not about this model
            program = torch.onnx.export(
                model,
                example,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)
    if program is None:  # only when torch.onnx.export is given a file path, which we don't
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    _strip_node_metadata(proto)
    onnx.checker.check_model(proto, full_check=True)
    # 18 MB is far below protobuf's 2 GB limit, so everything stays in one file.
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def _export_torchscript(model: torch.jit.ScriptModule, image_size: int, opset: int) -> onnx.ModelProto:
    # torch.export cannot trace a ScriptModule, so the TorchScript exporter does it; the onnxscript
    # optimizer then folds constants as the dynamo path does.
    import io

    import onnxscript.optimizer

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, image_size, image_size),),
            buffer,  # type: ignore[arg-type]
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return onnxscript.optimizer.optimize(onnx.load_from_string(buffer.getvalue()))


def _export_program(program: torch.export.ExportedProgram, image_size: int, opset: int) -> onnx.ModelProto:
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # torchvision-op registration chatter, as in export_fp32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            (torch.zeros(2, 3, image_size, image_size),),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    onnx_logger.setLevel(level)
    if onnx_program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return onnx_program.model_proto


def export_any(model: torch.nn.Module, path: Path, image_size: int = 224, opset: int = OPSET) -> Path:
    """Export an ``nn.Module``, a TorchScript module or a wrapped ``torch.export`` program to ``path``."""
    program = getattr(model, "program", None)
    if isinstance(program, torch.export.ExportedProgram):
        try:
            proto = _export_program(program, image_size, opset)
        except Exception as exc:
            raise UserError(
                f"cannot convert the torch.export program to ONNX: {str(exc).strip()[:200]}"
            ) from exc
        dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        if not dim.dim_param:
            raise UserError(
                "the torch.export program has a fixed batch size; export it with a dynamic batch "
                "dimension: dynamic_shapes=({0: torch.export.Dim('batch')},)"
            )
    elif isinstance(model, torch.jit.ScriptModule):
        try:
            proto = _export_torchscript(model, image_size, opset)
        except Exception as exc:
            raise UserError(
                f"cannot convert the TorchScript model to ONNX: {str(exc).strip()[:200]}"
            ) from exc
    else:
        return export_fp32(model, path, image_size, opset)
    _rename_io(proto)
    _strip_node_metadata(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def _rename_io(proto: onnx.ModelProto) -> None:
    """Give the single input and output the contract's names, whatever the source called them."""
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise UserError(
            f"the model must take one image tensor and return one logits tensor; it has "
            f"{len(proto.graph.input)} inputs and {len(proto.graph.output)} outputs"
        )
    renames = {proto.graph.input[0].name: INPUT_NAME, proto.graph.output[0].name: OUTPUT_NAME}
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.name = renames[value.name]
    for node in proto.graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name in renames:
                    seq[i] = renames[name]


def tensor_batches(
    model_path: Path, tensors: Iterable[str], paths: Sequence[Path], spec: PreprocessSpec, input_name: str
) -> Iterator[dict[str, np.ndarray]]:
    """Run the FP32 graph on ``paths`` in batches of 8 and yield each batch's values of ``tensors``
    (the input itself is included under ``input_name``). Calibration statistics (bias correction, GPTQ)
    read these; photos are decoded batch by batch."""
    batches = (load_batch(paths[start : start + 8], spec) for start in range(0, len(paths), 8))
    return tensor_values(model_path, tensors, batches, input_name)


def tensor_values(
    model_path: Path, tensors: Iterable[str], batches: Iterable[np.ndarray], input_name: str
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model_path`` on each input batch and yield its values of ``tensors`` (intermediate tensors
    made graph outputs on a temporary copy beside ``model_path``) and of the input."""
    augmented = onnx.load(str(model_path))
    present = {o.name for o in augmented.graph.output}
    for name in sorted(set(tensors) - {input_name} - present):
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    aug_path = model_path.with_name(f".{model_path.stem}.tensors.onnx")
    onnx.save(augmented, str(aug_path))
    try:
        session = inference_session(aug_path, 0)
        outputs = [o.name for o in session.get_outputs()]
        for x in batches:
            values = dict(zip(outputs, session.run(None, {input_name: x}), strict=True))
            values[input_name] = x
            yield values
    finally:
        aug_path.unlink(missing_ok=True)


def load_batch(paths: Sequence[Path], spec: PreprocessSpec | None = None) -> np.ndarray:
    spec = spec or PreprocessSpec()
    return np.stack([load_tensor(p, spec) for p in paths])


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    images: Sequence[Path],
    spec: PreprocessSpec | None = None,
    atol: float = PARITY_ATOL,
) -> ParityReport:
    """Compare ONNX FP32 (onnxruntime) with torch on real photos; raise ParityError on mismatch.

    Pass: max |logit difference| <= ``atol`` and identical top-1 on every image.
    """
    if not images:
        raise ParityError("parity check needs at least one image")
    x = load_batch(images, spec)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    got = inference_session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    report = ParityReport(
        images=len(images),
        max_abs_diff=float(np.max(np.abs(expected - got))),
        top1_agree=int(np.sum(expected.argmax(1) == got.argmax(1))),
        atol=atol,
    )
    if not report.ok:
        raise ParityError(
            f"ONNX export does not match PyTorch: max |logit diff| {report.max_abs_diff:.2e} "
            f"(limit {atol:.0e}), top-1 agrees on {report.top1_agree}/{report.images} photos"
        )
    return report
