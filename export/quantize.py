"""Static INT8 quantization of the FP32 ONNX model with onnxruntime, calibrated on real photos.

The recipe is a frozen, validated ``QuantConfig``; its JSON travels in the model's
``imgbatch.quantization`` metadata and beside the model as ``<model>.quant.json``, so any model
file says exactly how it was made.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from imgbatch.core.errors import UserError
from imgbatch.core.preprocess import PreprocessSpec, load_tensor
from imgbatch.export.saturation import WeightRange

_FORMATS = ("QDQ", "QOperator")
_TYPES = ("QInt8", "QUInt8")
_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")
_MODES = ("static", "dynamic", "fp32")
_ROUNDINGS = ("nearest", "gptq")
# Selectors usable in QuantConfig.keep_fp32 besides plain node names of the FP32 graph.
FIRST_CONV = "first-conv"
CLASSIFIER = "classifier"
FIRST_N = "first:"  # "first:3": the first three quantizable nodes in graph order


def first_count(item: str) -> int | None:
    """N of a "first:N" selector; None if ``item`` is not one with a count N >= 1."""
    count = item[len(FIRST_N) :] if item.startswith(FIRST_N) else ""
    return int(count) if count.isdigit() and int(count) > 0 else None


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
    # Variants of the bundled photos (imgbatch.core.samples.make_variants) used for calibration.
    calib_count: int = 100
    calib_seed: int = 0
    calib_batch_size: int = 8
    # Without VNNI, u8*s8 products can saturate the 16-bit accumulators of older x86 CPUs; ORT's
    # remedy is 7-bit weights. Off by default: modern CPUs (AVX512-VNNI/AVX-VNNI) are exact.
    reduce_range: bool = False
    # "static": QDQ with calibrated activations; "dynamic": weights INT8, activations quantized at run
    # time (no calibration); "fp32": no quantization, the parity-checked FP32 graph is the output.
    mode: str = "static"
    # Nodes left in FP32: node names of the exported graph, or "first-conv" / "classifier" / "first:N".
    keep_fp32: tuple[str, ...] = ()
    # Shift each conv/gemm bias by -(W_int8 - W) . E[input] (E measured on the calibration photos), so
    # the rounding error of the INT8 weights does not move the layer's mean output.
    bias_correction: bool = False
    # After quantizing, run the INT8 model and its FP32 source on the calibration photos and shift each
    # INT8 layer's bias until its mean output per channel is FP32's (export.measured_bias): this also
    # cancels the mean error of the 8-bit activations, which bias_correction cannot see.
    measured_bias_correction: bool = False
    # Weight scales chosen so that ORT's u8s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512
    # without VNNI) cannot saturate their 16-bit pair sums (export.saturation). Off, the model is only
    # exact on VNNI CPUs; workers elsewhere then switch ORT to its slower exact kernels
    # (imgbatch.core.modelfile).
    saturation_safe: bool = True
    # How weights become integers: "nearest", or "gptq", which rounds each layer's weights so that its
    # *output* error on the calibration photos is smallest (export.rounding).
    rounding: str = "nearest"
    # Leave the Gemm outputs (the classifier's logits) in float: as 8-bit codes the logits take ~100
    # distinct values, so the top two of an uncertain photo can tie exactly (6 of 400 natural photos
    # with EfficientNet-Lite0) and confidences come out coarse. Costs nothing measurable.
    float_logits: bool = True

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
        if self.mode not in _MODES:
            raise bad("mode", f"must be one of {', '.join(_MODES)}")
        if not isinstance(self.keep_fp32, tuple) or not all(isinstance(n, str) and n for n in self.keep_fp32):
            raise bad("keep_fp32", "must be a list of node names (or first-conv, classifier, first:N)")
        for item in self.keep_fp32:
            if item.startswith(FIRST_N) and first_count(item) is None:
                raise bad("keep_fp32", f"{item!r}: first:N needs a count N >= 1")
        if self.rounding not in _ROUNDINGS:
            raise bad("rounding", f"must be one of {', '.join(_ROUNDINGS)}")
        gptq_ok = not self.reduce_range and self.weight_type == "QInt8" and self.per_channel
        if self.rounding == "gptq" and not gptq_ok:
            raise bad("rounding", "gptq needs per-channel QInt8 weights without reduce_range")
        if self.calibrate_method not in _METHODS:
            raise bad("calibrate_method", f"must be one of {', '.join(_METHODS)}")
        flags = ("per_channel", "reduce_range", "bias_correction", "measured_bias_correction")
        for name in (*flags, "saturation_safe", "float_logits"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        for name, low in (("calib_count", 1), ("calib_batch_size", 1), ("calib_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"must be an integer >= {low}")

    def replace(self, **changes: object) -> QuantConfig:
        return QuantConfig(**{**asdict(self), **changes})  # type: ignore[arg-type]

    def keeping_fp32(self, nodes: Sequence[str]) -> QuantConfig:
        """This recipe with ``nodes`` left in FP32 too (after its own, without repeats)."""
        return self.replace(keep_fp32=tuple(dict.fromkeys((*self.keep_fp32, *nodes))))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantConfigError(f"QuantConfig: unknown field(s) {', '.join(unknown)}")
        if isinstance(data.get("keep_fp32"), list):
            data["keep_fp32"] = tuple(data["keep_fp32"])
        return cls(**data)

    def describe(self) -> str:
        if self.mode == "fp32":
            return f"{self.name}: FP32 only"
        if self.mode == "dynamic":
            parts = [f"dynamic {self.weight_type} weights"]
        else:
            parts = [
                f"static {self.quant_format} {'per-channel' if self.per_channel else 'per-tensor'}",
                f"{self.activation_type} activations, {self.weight_type} weights, {self.calibrate_method}",
                f"{self.calib_count} calibration photos",
            ]
        if self.saturation_safe and not self.reduce_range:
            parts.append("saturation-safe weight scales")
        if self.rounding != "nearest":
            parts.append(f"{self.rounding} weight rounding")
        if self.mode == "static" and self.float_logits:
            parts.append("float logits")
        if self.bias_correction:
            parts.append("bias correction")
        if self.mode == "static" and self.measured_bias_correction:
            parts.append("measured bias correction")
        if self.keep_fp32:
            parts.append(f"FP32: {', '.join(self.keep_fp32)}")
        return f"{self.name}: {'; '.join(parts)}"


PRESETS: dict[str, QuantConfig] = {
    "static-int8-per-channel": QuantConfig(name="static-int8-per-channel"),
    "static-int8-fp32-ends": QuantConfig(name="static-int8-fp32-ends", keep_fp32=(FIRST_CONV, CLASSIFIER)),
    "static-int8-bias-corrected": QuantConfig(name="static-int8-bias-corrected", bias_correction=True),
    # Percentile (99.999th) ranges clip the rare outliers that MinMax stretches the projection
    # outputs' 8 bits for; measured on 400 natural photos: MinMax + bias correction 95.8% top-1
    # agreement with FP32, Percentile + bias correction 96.5-97.0% (calibration seeds 0 and 1).
    "static-int8-percentile-bias-corrected": QuantConfig(
        name="static-int8-percentile-bias-corrected", calibrate_method="Percentile", bias_correction=True
    ),
    # GPTQ rounding on top: each layer's weights rounded for the smallest output error, not weight by
    # weight (export.rounding). Measured on 1,000 natural photos, calibration seeds 0 / 1: KL divergence
    # to FP32 0.0044 / 0.0045 instead of 0.0073 / 0.0075, top-5 overlap 96.0 / 95.8% instead of
    # 94.5 / 94.6%, top-1 agreement 96.4 / 97.3% instead of 96.5 / 95.7%; ~25 s more per export.
    "static-int8-gptq": QuantConfig(
        name="static-int8-gptq", calibrate_method="Percentile", bias_correction=True, rounding="gptq"
    ),
    # The GPTQ recipe with the first three quantizable nodes left in FP32: on EfficientNet-Lite0 the
    # stem conv and block 0 (depthwise + projection) at 112x112, which carry a large share of the
    # quantization noise (3-channel stem, 32-channel depthwise) and which MLAS runs *faster* in FP32
    # than in INT8. Measured on 1,000 natural photos (AMD EPYC, onnxruntime 1.32): KL to FP32 0.0022
    # instead of 0.0043, top-5 overlap 97.0% instead of 96.1%, top-1 agreement 97.5-97.8% instead of
    # 96.8%, and 2.42-2.46x FP32 ONNX instead of 2.35x. EfficientNet-Lite0's default (export.sources);
    # not ResNet-50's, whose 7x7 stem and first 3x3 conv are heavy in FP32 (3.45x -> 2.99x).
    # Measured bias correction on top (export.measured_bias; Intel Xeon, same 1,000 photos): KL 0.00224
    # -> 0.00192 (100 photos measured; 0.00185 with 300), top-5 overlap 97.0 -> 97.2% (97.4%), top-1
    # agreement 97.8 -> 98.0% (97.4%: top-1 moves within its +-0.5% noise); no speed cost, ~35 s.
    "static-int8-gptq-fp32-first-block": QuantConfig(
        name="static-int8-gptq-fp32-first-block",
        calibrate_method="Percentile",
        bias_correction=True,
        rounding="gptq",
        keep_fp32=("first:3",),
        measured_bias_correction=True,
    ),
    "dynamic-int8": QuantConfig(name="dynamic-int8", mode="dynamic"),
    "fp32": QuantConfig(name="fp32", mode="fp32"),
}
DEFAULT_PRESET = "static-int8-gptq"


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
            if len(chunk) < self.batch_size and len(self.paths) >= self.batch_size:
                # Fill a short last batch with the first photos: ORT's histogram calibrators
                # (Percentile, Entropy) stack the per-batch outputs and fail on a ragged last batch.
                chunk = chunk + self.paths[: self.batch_size - len(chunk)]
            yield {self.input_name: np.stack([load_tensor(p, self.spec) for p in chunk])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


def quantizable_nodes(model_path: Path) -> list[tuple[str, str]]:
    """(name, op_type) of the Conv/Gemm/MatMul nodes with constant weights, in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [
        (node.name, node.op_type)
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weights
    ]


def resolve_keep_fp32(model_path: Path, keep: Sequence[str]) -> list[str]:
    """Node names for ``keep`` (names or the first-conv / classifier / first:N selectors); unknown
    names fail."""
    nodes = quantizable_nodes(model_path)
    names = [name for name, _ in nodes]
    resolved: list[str] = []
    for item in keep:
        count = first_count(item)
        if count is not None:
            resolved.extend(n for n in names[:count] if n not in resolved)
            continue
        if item == FIRST_CONV:
            name = next((n for n, op in nodes if op == "Conv"), None)
        elif item == CLASSIFIER:
            name = names[-1] if names else None
        else:
            name = item if item in names else None
            if name is None:
                raise QuantConfigError(
                    f"QuantConfig.keep_fp32: no quantizable node {item!r} in the model "
                    f"(e.g. {', '.join(names[:3])})"
                )
        if name is not None and name not in resolved:
            resolved.append(name)
    return resolved


def safe_weight_ranges(
    prepped: Path, config: QuantConfig, skip: Sequence[str] = ()
) -> dict[str, WeightRange]:
    """The saturation-safe weight ranges ``config`` asks for (none with 7-bit weights or when off)."""
    if not config.saturation_safe or config.reduce_range:
        return {}
    from imgbatch.export.saturation import weight_ranges

    return weight_ranges(prepped, skip=set(skip))


def config_bias_deltas(
    prepped: Path,
    calib_paths: Sequence[Path],
    spec: PreprocessSpec,
    config: QuantConfig,
    ranges: dict[str, WeightRange],
    input_name: str = "input",
    rounded: Path | None = None,
) -> dict[str, np.ndarray]:
    """Bias shifts for the weights exactly as ``config`` and ``ranges`` will quantize them
    (``rounded``: ``prepped`` with its weights already rounded, see ``round_config_weights``)."""
    from imgbatch.export.biascorr import bias_deltas

    bounds = {name: r.bound for name, r in ranges.items()}
    return bias_deltas(
        prepped,
        calib_paths,
        spec,
        input_name,
        reduce_range=config.reduce_range,
        bounds=bounds,
        rounded_path=rounded,
    )


def round_config_weights(
    prepped: Path,
    output: Path,
    calib_paths: Sequence[Path],
    spec: PreprocessSpec,
    config: QuantConfig,
    ranges: dict[str, WeightRange],
    input_name: str = "input",
    skip: Sequence[str] = (),
) -> tuple[Path, dict[str, WeightRange]]:
    """``prepped`` with weights rounded as ``config.rounding`` says, and the ranges to pin in ORT
    (``ranges`` plus those of every rounded weight). With "nearest" nothing changes."""
    if config.rounding == "nearest":
        return prepped, ranges
    from imgbatch.export.rounding import round_weights

    bounds = {name: r.bound for name, r in ranges.items()}
    rounded, pinned = round_weights(prepped, output, calib_paths, spec, bounds, input_name, skip=skip)
    return rounded, {**ranges, **pinned}


def prepare(fp32_path: Path, output_path: Path) -> Path:
    """Shape inference + ORT's basic graph optimizations, as ORT recommends before quantizing."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(fp32_path), str(output_path), skip_symbolic_shape=False)
    return output_path


def quantize_int8(
    fp32_path: Path,
    output_path: Path,
    calib_paths: Sequence[Path],
    config: QuantConfig,
    spec: PreprocessSpec | None = None,
    input_name: str = "input",
    cache_path: Path | None = None,
    prepped_path: Path | None = None,
) -> Path:
    """Quantize ``fp32_path`` into ``output_path`` as ``config`` says (static QDQ, dynamic or copy).

    ``cache_path``: calibration ranges are stored there and reused by later calls with the same
    calibration set, so a search over ``keep_fp32`` calibrates once. ``prepped_path``: an already
    pre-processed model (``prepare``) to start from.
    """
    import shutil

    from imgbatch.export.biascorr import apply_bias_deltas

    spec = spec or PreprocessSpec()
    if config.mode == "fp32":
        shutil.copyfile(fp32_path, output_path)
        return output_path
    with tempfile.TemporaryDirectory(prefix="imgbatch-quant-", dir=output_path.parent) as tmp:
        # Fusing before calibration means ranges are measured on the tensors that will be quantized.
        prepped = prepped_path or prepare(fp32_path, Path(tmp) / "prepped.onnx")
        exclude = resolve_keep_fp32(prepped, config.keep_fp32)
        if config.mode == "dynamic":
            return _quantize_dynamic(prepped, output_path, config, exclude)
        ranges = safe_weight_ranges(prepped, config, skip=exclude)
        rounded, ranges = round_config_weights(
            prepped, Path(tmp) / "rounded.onnx", calib_paths, spec, config, ranges, input_name, skip=exclude
        )
        if config.bias_correction:
            deltas = config_bias_deltas(prepped, calib_paths, spec, config, ranges, input_name, rounded)
            rounded = apply_bias_deltas(rounded, Path(tmp) / "corrected.onnx", deltas, skip=exclude)
        if rounded != prepped:
            cache_path = None  # other weights and biases: other ranges downstream
        reader = PhotoCalibrationReader(calib_paths, spec, input_name, config.calib_batch_size)
        _quantize_static(rounded, output_path, reader, config, exclude, ranges, cache_path)
        if config.measured_bias_correction:
            from imgbatch.export.measured_bias import correct_biases

            # ``prepped`` is the FP32 reference: same tensor names as the quantized graph.
            correct_biases(output_path, prepped, calib_paths, spec, input_name=input_name)
    return output_path


def _quantize_dynamic(prepped: Path, output_path: Path, config: QuantConfig, exclude: list[str]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(prepped),
        str(output_path),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=QuantType[config.weight_type],
        nodes_to_exclude=exclude,
    )
    return output_path


def _quantize_static(
    prepped: Path,
    output_path: Path,
    reader: PhotoCalibrationReader,
    config: QuantConfig,
    exclude: list[str],
    ranges: dict[str, WeightRange],
    cache_path: Path | None,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from imgbatch.export.saturation import tensor_overrides

    # ORT's histogram calibrators (Percentile, Entropy, Distribution) print their progress to
    # stdout; the export report is what the user reads there.
    with contextlib.redirect_stdout(io.StringIO()):
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
            nodes_to_exclude=exclude,
            extra_options={
                "TensorQuantOverrides": tensor_overrides(ranges),
                "OpTypesToExcludeOutputQuantization": ["Gemm"] if config.float_logits else [],
            },
            calibration_cache_path=str(cache_path) if cache_path else None,
            # No CalibMaxIntermediateOutputs: in this ORT the MinMax calibrator *discards* each full
            # chunk instead of folding it into the ranges, so only the last chunk would count. It is
            # not needed either: MinMax augments the graph with ReduceMin/ReduceMax and keeps only
            # two scalars per tensor per batch.
        )
