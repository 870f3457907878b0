"""The contract between export and workers: what an imgbatch ONNX file carries in ``metadata_props``.

Export writes these keys (with the ``onnx`` package); workers read them through onnxruntime alone,
so a worker needs nothing but the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgbatch.core.errors import ModelFileError
from imgbatch.core.preprocess import PreprocessSpec

FORMAT_VERSION = "1"
# Keys in ONNX metadata_props. Values are strings; structured ones are JSON.
KEY_FORMAT = "imgbatch.format_version"
KEY_LABELS = "imgbatch.labels"  # JSON list of class names, index = class index
KEY_PREPROCESS = "imgbatch.core.preprocess"  # JSON PreprocessSpec
KEY_INPUT_SIZE = "imgbatch.input_size"  # JSON [channels, height, width]
KEY_OUTPUT = "imgbatch.output"  # "logits" or "probabilities"
KEY_GRAPH_SHA256 = "imgbatch.graph_sha256"  # sha256 of the serialized graph, metadata excluded
KEY_ARCH = "imgbatch.arch"
KEY_QUANTIZATION = "imgbatch.quantization"  # JSON quantization config, or "none"
REQUIRED_KEYS = (KEY_FORMAT, KEY_LABELS, KEY_PREPROCESS, KEY_INPUT_SIZE, KEY_OUTPUT, KEY_GRAPH_SHA256)


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    labels: list[str]
    preprocess: PreprocessSpec
    input_size: tuple[int, int, int]
    output: str
    graph_sha256: str  # as the metadata claims it (export's record); never trusted for identity
    sha256: str = ""  # of the file's bytes, computed at load: what jobs ask for and results record
    arch: str = "unknown"
    quantization: str = "none"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def int8_saturation_safe(self) -> bool:
        """False for INT8 models whose products can saturate ORT's 16-bit pair sums on non-VNNI x86.

        Models made by ``imgbatch export`` with ``saturation_safe`` (the default) or 7-bit weights
        (``reduce_range``) cannot; FP32 models have nothing to saturate; anything else might.
        """
        return quantization_is_saturation_safe(self.quantization)

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str]) -> ModelInfo:
        missing = [key for key in REQUIRED_KEYS if key not in meta]
        if missing:
            raise ModelFileError(
                f"{path} is not an imgbatch model: metadata_props lacks {', '.join(missing)} "
                "(build one with `imgbatch export`)"
            )
        if meta[KEY_FORMAT] != FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: model format {meta[KEY_FORMAT]!r}, this imgbatch reads {FORMAT_VERSION!r}"
            )
        try:
            labels = json.loads(meta[KEY_LABELS])
            spec = PreprocessSpec.from_json(meta[KEY_PREPROCESS])
            c, h, w = (int(v) for v in json.loads(meta[KEY_INPUT_SIZE]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFileError(f"{path}: malformed imgbatch metadata: {exc}") from exc
        if meta[KEY_OUTPUT] not in ("logits", "probabilities"):
            raise ModelFileError(f"{path}: {KEY_OUTPUT} must be logits or probabilities")
        if (h, w) != (spec.crop, spec.crop):
            raise ModelFileError(f"{path}: input size {h}x{w} disagrees with preprocessing crop {spec.crop}")
        return cls(
            path=path,
            labels=[str(label) for label in labels],
            preprocess=spec,
            input_size=(c, h, w),
            output=meta[KEY_OUTPUT],
            graph_sha256=meta[KEY_GRAPH_SHA256],
            arch=meta.get(KEY_ARCH, "unknown"),
            quantization=meta.get(KEY_QUANTIZATION, "none"),
            extra={k: v for k, v in meta.items() if k not in REQUIRED_KEYS},
        )


def quantization_is_saturation_safe(quantization_json: str) -> bool:
    try:
        config = json.loads(quantization_json)
    except ValueError:
        return quantization_json == "none"
    if not isinstance(config, dict) or config.get("mode") == "fp32":
        return True
    if config.get("reduce_range"):
        return True
    return config.get("mode") == "static" and bool(config.get("saturation_safe"))


def session_options(
    intra_op_threads: int = 1, exact_int8: bool = False, optimized_model_path: Path | None = None
) -> Any:
    """onnxruntime SessionOptions as workers use them; export measures with the same ones.

    ``optimized_model_path``: also write the graph as ORT runs it there (to see what it fused)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Set explicitly: ORT's default takes every core per session, and N worker processes would
    # then oversubscribe the CPU (onnxruntime#23747).
    options.intra_op_num_threads = max(1, intra_op_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The CPU arena stays on: without it EfficientNet-Lite0 INT8 measured 4.8-5.3 ms/image at batch 8
    # instead of 4.4-4.5, and peak RSS went up. Memory patterns (one block pre-planned for every
    # intermediate tensor of a batch shape) go off: with the FP32 first block of EfficientNet-Lite0's
    # recipe they raised a worker's peak RSS at batch 8 from 176 to 202 MB (all-INT8 model: 170 vs
    # 175) for no speed (2.23 vs 2.25 ms/image at batch 8, one thread).
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    if exact_int8:
        # ORT's u8u8 kernels: exact on every x86 CPU, slower than u8s8 without VNNI (export.saturation).
        options.add_session_config_entry("session.x64quantprecision", "1")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


# ORT's WeightBiasQuantization transformer (ORT >= 1.20) quantizes the float weights of every
# Conv/Gemm that sits between a DequantizeLinear and a QuantizeLinear, symmetric per-tensor INT8, when
# the session is created. That is exactly what a recipe's FP32 nodes (QuantConfig.keep_fp32) look like,
# so they would silently run as coarse per-tensor INT8 instead (EfficientNet-Lite0, one depthwise conv
# kept: KL to FP32 0.0282 instead of 0.0244). Models without FP32 nodes have nothing it acts on.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


def inference_session(
    path: Path | bytes,
    intra_op_threads: int = 1,
    exact_int8: bool = False,
    optimized_model_path: Path | None = None,
) -> Any:
    """An onnxruntime CPU session as workers run it (from a file or its bytes); export and bench
    measure with the same one."""
    import onnxruntime as ort

    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path),
        sess_options=session_options(intra_op_threads, exact_int8, optimized_model_path),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def read_model_bytes(path: Path) -> bytes:
    """The model file's bytes, read once: a runtime is made from exactly the bytes that are hashed
    (no swap in between). Errors are ModelFileError."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(
            f"model path {path} is a directory, not an ONNX file (set IMGBATCH_MODEL to a file)"
        )
    if not path.is_file():
        raise ModelFileError(
            f"model file not found: {path} (build it with `imgbatch export`, or set IMGBATCH_MODEL)"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read model {path}: {exc.strerror or exc}") from exc


def open_session(path: Path, intra_op_threads: int = 1, data: bytes | None = None) -> tuple[Any, ModelInfo]:
    """Load an ONNX model with onnxruntime and read its contract. Errors are ModelFileError.

    ``data``: the file's bytes when the caller has read them already (``read_model_bytes``).
    An INT8 model that is not saturation-safe, on an x86 CPU without VNNI, is loaded with ORT's exact
    (slower) kernels rather than let 16-bit sums clip silently, and a warning says so.
    """
    import logging

    from imgbatch.core.cpus import int8_pairs_saturate

    path = Path(path)
    data = read_model_bytes(path) if data is None else data

    def load(exact: bool) -> Any:
        try:
            return inference_session(data, intra_op_threads, exact)
        except Exception as exc:  # ORT raises its own exception types for malformed files
            raise ModelFileError(f"cannot load model {path}: {first_line(exc)}") from exc

    session = load(False)
    info = ModelInfo.from_metadata(path, dict(session.get_modelmeta().custom_metadata_map))
    if not info.int8_saturation_safe and int8_pairs_saturate():
        logging.getLogger("imgbatch").warning(
            "%s is an INT8 model that is not saturation-safe and this CPU has no VNNI: running ORT's "
            "exact, slower INT8 kernels (rebuild it with `imgbatch export` for full speed)",
            path,
        )
        session = load(True)
    check_input_shapes(path, [i.shape for i in session.get_inputs()])
    _check_outputs(session, info)
    # The identity of what runs is the file's bytes, not what its metadata says (a foreign graph can
    # carry copied metadata).
    return session, replace(info, sha256=hashlib.sha256(data).hexdigest())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (runtimes raise long multi-line ones), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_input_shapes(path: Path, shapes: list[Any]) -> None:
    """The contract's input: exactly one NCHW image tensor."""
    if len(shapes) != 1 or len(shapes[0]) != 4:
        raise ModelFileError(f"{path}: expected one NCHW image input, got {shapes}")


def check_class_count(info: ModelInfo, classes: int) -> None:
    """The model's class count (its output's last dimension) must equal the labels it carries."""
    if classes != len(info.labels):
        raise ModelFileError(
            f"{info.path}: the model has {classes} outputs but {len(info.labels)} labels in its metadata"
        )


def _check_outputs(session: Any, info: ModelInfo) -> None:
    shape = session.get_outputs()[0].shape
    classes = shape[-1] if shape else None
    if not isinstance(classes, int):
        import numpy as np

        probe = np.zeros((1, *info.input_size), dtype=np.float32)
        classes = int(session.run(None, {session.get_inputs()[0].name: probe})[0].shape[-1])
    check_class_count(info, classes)


def read_model_info(path: Path) -> ModelInfo:
    """The contract of a model file, for producers that only need its hash and labels."""
    return open_session(path)[1]
