"""Static INT8 quantization of the FP32 ONNX model with onnxruntime, calibrated on real photos.

The recipe is a frozen, validated ``QuantConfig``; its JSON travels in the model's
``imgbatch.quantization`` metadata and beside the model as ``<model>.quant.json``, so any model
file says exactly how it was made.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from imgbatch.errors import UserError
from imgbatch.preprocess import PreprocessSpec, load_tensor

_FORMATS = ("QDQ", "QOperator")
_TYPES = ("QInt8", "QUInt8")
_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")


class QuantConfigError(UserError):
    """A quantization recipe with an invalid field."""


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: ORT options plus the calibration set. Validated on construction."""

    name: str
    quant_format: str = "QDQ"
    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    calibrate_method: str = "MinMax"
    # Variants of the bundled photos (imgbatch.samples.make_variants) used for calibration.
    calib_count: int = 100
    calib_seed: int = 0
    calib_batch_size: int = 8
    # Without VNNI, u8*s8 products can saturate the 16-bit accumulators of older x86 CPUs; ORT's
    # remedy is 7-bit weights. Off by default: modern CPUs (AVX512-VNNI/AVX-VNNI) are exact.
    reduce_range: bool = False

    def __post_init__(self) -> None:
        def bad(field_name: str, why: str) -> QuantConfigError:
            value = getattr(self, field_name)
            return QuantConfigError(f"QuantConfig.{field_name}={value!r}: {why}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", "needs a non-empty string")
        if self.quant_format not in _FORMATS:
            raise bad("quant_format", f"must be one of {', '.join(_FORMATS)}")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in _TYPES:
                raise bad(name, f"must be one of {', '.join(_TYPES)}")
        if self.calibrate_method not in _METHODS:
            raise bad("calibrate_method", f"must be one of {', '.join(_METHODS)}")
        for name in ("per_channel", "reduce_range"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        for name, low in (("calib_count", 1), ("calib_batch_size", 1), ("calib_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"must be an integer >= {low}")

    def replace(self, **changes: object) -> QuantConfig:
        return QuantConfig(**{**asdict(self), **changes})  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantConfigError(f"QuantConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, QuantConfig] = {
    "static-int8-per-channel": QuantConfig(name="static-int8-per-channel"),
}
DEFAULT_PRESET = "static-int8-per-channel"


def get_preset(name: str = DEFAULT_PRESET) -> QuantConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise QuantConfigError(f"unknown quantization preset {name!r}; known: {', '.join(PRESETS)}") from None


def _ort_calibration_reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class PhotoCalibrationReader(_ort_calibration_reader_base()):  # type: ignore[misc]
    """Feeds ``{input_name: (B, 3, H, W)}`` batches made by the shared ``load_tensor``.

    Images are decoded lazily, batch by batch, so memory stays at one batch of input.
    """

    def __init__(self, paths: Sequence[Path], spec: PreprocessSpec, input_name: str, batch_size: int) -> None:
        if not paths:
            raise UserError("calibration needs at least one photo")
        self.paths = list(paths)
        self.spec = spec
        self.input_name = input_name
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.paths), self.batch_size):
            chunk = self.paths[start : start + self.batch_size]
            yield {self.input_name: np.stack([load_tensor(p, self.spec) for p in chunk])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def quantize_int8(
    fp32_path: Path,
    output_path: Path,
    calib_paths: Sequence[Path],
    config: QuantConfig,
    spec: PreprocessSpec | None = None,
    input_name: str = "input",
) -> Path:
    """quant_pre_process + quantize_static(``config``) of ``fp32_path`` into ``output_path``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    spec = spec or PreprocessSpec()
    with tempfile.TemporaryDirectory(prefix="imgbatch-quant-", dir=output_path.parent) as tmp:
        # Shape inference + ORT's basic graph optimizations first, as ORT recommends: the quantizer
        # needs every tensor's shape, and fusing before calibration means ranges are measured on
        # the tensors that will actually be quantized.
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=False)
        reader = PhotoCalibrationReader(calib_paths, spec, input_name, config.calib_batch_size)
        quantize_static(
            str(prepped),
            str(output_path),
            calibration_data_reader=reader,
            quant_format=QuantFormat[config.quant_format],
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=QuantType[config.activation_type],
            weight_type=QuantType[config.weight_type],
            calibrate_method=CalibrationMethod[config.calibrate_method],
            # No CalibMaxIntermediateOutputs: in this ORT the MinMax calibrator *discards* each full
            # chunk instead of folding it into the ranges, so only the last chunk would count. It is
            # not needed either: MinMax augments the graph with ReduceMin/ReduceMax and keeps only
            # two scalars per tensor per batch.
        )
    return output_path
