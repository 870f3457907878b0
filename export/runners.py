"""The models an export compares (PyTorch eager, FP32 ONNX, INT8 ONNX; the ONNX ones on onnxruntime and,
where it is installed, on OpenVINO) and how to run each on a batch.

Evaluation, the speed benchmark and the ``--auto`` search all run models through these runners, so
all three see the same sessions: ONNX models run as workers will run them (``inference_session``,
``imgbatch.core.runtimes.open_openvino``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgbatch.core.cpus import int8_pairs_saturate
from imgbatch.core.modelfile import inference_session, quantization_is_saturation_safe
from imgbatch.core.runtimes import (
    batch_of_one,
    compile_openvino,
    openvino_version,
    read_openvino,
    run_one_by_one,
)
from imgbatch.export.quantize import QuantConfig
from imgbatch.export.report import Row, Runner

TORCH_FP32 = "PyTorch eager FP32"
ONNX_FP32 = "ONNX FP32"  # on onnxruntime, the reference runtime
ONNX_INT8 = "ONNX INT8"
OPENVINO_FP32 = "ONNX FP32 on OpenVINO"
OPENVINO_INT8 = "ONNX INT8 on OpenVINO"
# (FP32 row, INT8 row) of each runtime: what the gate compares for the runtime workers will use.
RUNTIME_ROWS = {"onnxruntime": (ONNX_FP32, ONNX_INT8), "openvino": (OPENVINO_FP32, OPENVINO_INT8)}


def exact_int8(config: QuantConfig) -> bool:
    """Whether workers on this CPU will run ``config``'s model on ORT's exact INT8 kernels (modelfile)."""
    return not quantization_is_saturation_safe(config.to_json()) and int8_pairs_saturate()


def onnx_runner(path: Path, threads: int, exact: bool = False) -> Runner:
    """``exact``: on ORT's exact INT8 kernels (``exact_int8``)."""
    session = inference_session(path, threads, exact)
    return lambda x: session.run(None, {"input": x})[0]


def openvino_runner(path: Path, threads: int) -> Runner:
    """The ONNX file compiled by OpenVINO as workers compile it (without the contract's checks: the
    FP32 file of an export carries no imgbatch metadata)."""
    model = read_openvino(path, path.read_bytes())
    batch_of_one(model, path)
    request = compile_openvino(path, model, threads).create_infer_request()
    return lambda x: run_one_by_one(request, x)


def openvino_available() -> bool:
    """Whether OpenVINO imports here: the report then has its rows too."""
    if openvino_version() is None:
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def torch_runner(model: object, threads: int) -> Runner:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()  # type: ignore[operator,no-any-return]

    return run


def logits(runner: Runner, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """``runner`` on all of ``x``, ``batch`` images at a time."""
    return np.concatenate([runner(x[i : i + batch]) for i in range(0, len(x), batch)])


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


@dataclass(frozen=True)
class ComparedModels:
    """One export's models: the PyTorch source, its FP32 ONNX and (unless the recipe is FP32) its INT8."""

    torch_model: object
    torch_file: Path
    fp32: Path
    int8: Path | None
    exact_kernels: bool = False  # INT8 on ORT's exact kernels, as workers on this CPU will run it
    openvino: bool = False  # also rows of the ONNX models on OpenVINO

    def files(self) -> dict[str, Path]:
        """Model file per report row name, in the report's row order."""
        files = {TORCH_FP32: self.torch_file, ONNX_FP32: self.fp32}
        if self.int8 is not None:
            files[ONNX_INT8] = self.int8
        if self.openvino:
            files[OPENVINO_FP32] = self.fp32
            if self.int8 is not None:
                files[OPENVINO_INT8] = self.int8
        return files

    def rows(self) -> dict[str, Row]:
        """One report row per model, with its file size and no figures yet."""
        return {name: Row(name, size_mb(path)) for name, path in self.files().items()}

    def runner(self, name: str, threads: int) -> Runner:
        if name == TORCH_FP32:
            return torch_runner(self.torch_model, threads)
        if name in (OPENVINO_FP32, OPENVINO_INT8):
            return openvino_runner(self.files()[name], threads)
        return onnx_runner(self.files()[name], threads, self.exact_kernels and name == ONNX_INT8)
