"""Export pipeline: strict weights, FP32 parity, INT8 contract and accuracy, atomic output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime.quantization")

from imgbatch.core.errors import UserError  # noqa: E402
from imgbatch.core.modelfile import open_session  # noqa: E402
from imgbatch.core.preprocess import PreprocessSpec, load_tensor  # noqa: E402
from imgbatch.core.samples import EXPECTED_CLASSES, write_photos  # noqa: E402
from imgbatch.export import build as build_mod  # noqa: E402
from imgbatch.export.build import BuildReport, ExportOptions, build_model, quant_json_path  # noqa: E402
from imgbatch.export.efficientnet_lite import checkpoint_path, load_pretrained  # noqa: E402
from imgbatch.export.metadata import KEY_SOURCE_SHA256, graph_sha256  # noqa: E402
from imgbatch.export.onnx_export import ParityError, check_parity  # noqa: E402
from imgbatch.export.quantize import QuantConfig, QuantConfigError, get_preset  # noqa: E402
from imgbatch.export.sources import file_sha256  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildReport, Path]:
    out_dir = tmp_path_factory.mktemp("model")
    fp32 = out_dir / "fp32.onnx"
    # 32 calibration photos keep the build ~10 s; the default of 100 is for real use.
    # No benchmark and no gate here: this checks the file, not the figures (those are in the report).
    options = ExportOptions(eval_count=8, benchmark=False, gate=False)
    report = build_model(
        out_dir / "efficientnet_lite0.int8.onnx", calib_count=32, seed=0, fp32_output=fp32, options=options
    )
    return report, fp32


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_photos(tmp_path_factory.mktemp("photos"))
    return {p.stem: p for p in paths}


def test_state_dict_loads_strictly() -> None:
    model = load_pretrained()  # load_state_dict(strict=True) inside
    checkpoint = torch.load(checkpoint_path(), map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == list(checkpoint)


def test_fp32_onnx_matches_torch(built: tuple[BuildReport, Path], photos: dict[str, Path]) -> None:
    report, fp32 = built
    assert report.parity.ok and report.parity.max_abs_diff <= 1e-3
    model = load_pretrained()
    again = check_parity(model, fp32, list(photos.values()))
    assert again.max_abs_diff <= 1e-3 and again.top1_agree == len(photos)
    # The check must actually be able to fail: a perturbed torch model is caught.
    with torch.no_grad():
        model._fc.bias.add_(0.1)
    with pytest.raises(ParityError, match="does not match PyTorch"):
        check_parity(model, fp32, list(photos.values()))


def test_int8_model_contract(built: tuple[BuildReport, Path]) -> None:
    report, _ = built
    session, info = open_session(report.path)
    assert len(info.labels) == 1000 and info.labels[281] == "tabby" and info.labels[967] == "espresso"
    assert len(set(info.labels)) == 1000  # the two cranes and two maillots are told apart
    assert re.fullmatch(r"[0-9a-f]{64}", info.graph_sha256)
    assert graph_sha256(onnx.load(str(report.path))) == info.graph_sha256
    assert info.input_size == (3, 224, 224) and info.output == "logits"
    assert info.preprocess == PreprocessSpec()
    quant = QuantConfig.from_json(info.quantization)
    # No preset named: EfficientNet-Lite0's own (export.sources.Arch.preset).
    assert quant == get_preset("static-int8-gptq-fp32-first-block").replace(calib_count=32)
    assert json.loads(quant_json_path(report.path).read_text()) == json.loads(info.quantization)
    assert info.extra[KEY_SOURCE_SHA256] == file_sha256(checkpoint_path())
    assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "logits"
    assert report.int8_bytes < report.fp32_bytes / 3


def test_int8_classifies_photos(built: tuple[BuildReport, Path], photos: dict[str, Path]) -> None:
    session, info = open_session(built[0].path)
    names = sorted(EXPECTED_CLASSES)
    # Batch of 2 also exercises the dynamic batch axis.
    x = np.stack([load_tensor(photos[name], info.preprocess) for name in names])
    logits = session.run(None, {"input": x})[0]
    # Float logits (QuantConfig.float_logits): 8-bit ones would take at most 256 values per photo.
    assert min(len(np.unique(row)) for row in logits) > 256
    for name, row in zip(names, logits, strict=True):
        assert int(row.argmax()) in EXPECTED_CLASSES[name], (name, info.labels[int(row.argmax())])


def test_quant_config_validation_names_field() -> None:
    with pytest.raises(QuantConfigError, match="weight_type"):
        QuantConfig(name="x", weight_type="int8")
    with pytest.raises(QuantConfigError, match="calib_count"):
        get_preset().replace(calib_count=0)
    with pytest.raises(UserError, match="unknown quantization preset"):
        get_preset("nope")
    for bad in ("first:0", "first:x", "first:"):
        with pytest.raises(QuantConfigError, match="first:N needs a count"):
            get_preset().replace(keep_fp32=(bad,))
    preset = get_preset("static-int8-per-channel")
    assert QuantConfig.from_json(preset.to_json()) == preset


def test_bad_calibration_count_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="calib_count"):
        build_model(out, calib_count=0)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    # A regular file as parent directory fails for root too, unlike chmod-based checks.
    with pytest.raises(UserError, match="cannot create output directory"):
        build_model(blocker / "m.onnx", calib_count=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_build_keeps_previous_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")

    def crash(model: object, path: Path, **kwargs: object) -> Path:
        path.write_bytes(b"half a model")
        raise RuntimeError("simulated crash during export")

    monkeypatch.setattr(build_mod, "export_any", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        build_model(out, calib_count=1)
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def _logits(path: Path, x: np.ndarray, exact: bool) -> np.ndarray:
    from imgbatch.core.modelfile import inference_session

    return np.asarray(inference_session(path, 1, exact).run(None, {"input": x})[0])


def test_fp32_nodes_of_a_recipe_stay_fp32_in_the_session(
    built: tuple[BuildReport, Path], tmp_path: Path
) -> None:
    """A node the recipe keeps in FP32 runs as a float Conv in the session workers use, not as the
    per-tensor INT8 conv ORT's WeightBiasQuantization transformer would silently turn it into."""
    from collections import Counter

    from imgbatch.core.modelfile import inference_session
    from imgbatch.core.samples import make_variants
    from imgbatch.export.quantize import quantizable_nodes, quantize_int8

    _, fp32 = built
    convs = [name for name, op in quantizable_nodes(fp32) if op == "Conv"]
    kept = convs[len(convs) // 2]  # a conv between quantized neighbours: DQ -> Conv -> Q
    config = QuantConfig(name="keep-one", keep_fp32=(kept,), calib_count=8, calib_batch_size=4)
    model = quantize_int8(fp32, tmp_path / "m.onnx", make_variants(tmp_path / "calib", 8, seed=0), config)
    inference_session(model, 1, optimized_model_path=tmp_path / "as_run.onnx")
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "as_run.onnx")).graph.node)
    assert ops["QLinearConv"] == len(convs) - 1, ops


def test_default_recipe_runs_efficientnets_first_block_in_fp32(
    built: tuple[BuildReport, Path], tmp_path: Path
) -> None:
    """EfficientNet-Lite0's default recipe leaves the stem and block 0 (first:3) in FP32 and only
    those, in the graph ORT runs; other architectures and TorchScript/.pt2 files get the general one."""
    from collections import Counter

    from imgbatch.core.modelfile import inference_session
    from imgbatch.export.quantize import DEFAULT_PRESET, quantizable_nodes, resolve_keep_fp32
    from imgbatch.export.sources import default_preset

    report, fp32 = built
    nodes = quantizable_nodes(fp32)
    assert resolve_keep_fp32(fp32, ("first:3", "first-conv")) == [name for name, _ in nodes[:3]]
    assert [op for _, op in nodes[:3]] == ["Conv"] * 3
    inference_session(report.path, 1, optimized_model_path=tmp_path / "as_run.onnx")
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "as_run.onnx")).graph.node)
    assert ops["QLinearConv"] == sum(op == "Conv" for _, op in nodes) - 3, ops
    assert default_preset("resnet50") == DEFAULT_PRESET
    assert default_preset("efficientnet_lite0", state_dict=False) == DEFAULT_PRESET


def test_saturation_safe_model_computes_the_same_on_fast_and_exact_kernels(
    built: tuple[BuildReport, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    """The default model gives ORT's fast u8s8 kernels nothing to saturate: the same logits as its exact
    kernels. The same recipe without saturation-safe scales does differ on an x86 CPU without VNNI."""
    from imgbatch.core.cpus import int8_pairs_saturate
    from imgbatch.core.samples import make_variants
    from imgbatch.export.quantize import quantize_int8

    report, fp32 = built
    x = np.stack([load_tensor(p, PreprocessSpec()) for p in photos.values()])
    np.testing.assert_allclose(_logits(report.path, x, False), _logits(report.path, x, True), atol=1e-5)

    calib = make_variants(tmp_path / "calib", 16, seed=0)
    unsafe = quantize_int8(fp32, tmp_path / "unsafe.onnx", calib, get_preset().replace(saturation_safe=False))
    diff = float(np.abs(_logits(unsafe, x, False) - _logits(unsafe, x, True)).max())
    if int8_pairs_saturate():
        assert diff > 0.1  # the clipping the safe scales avoid
    else:
        assert diff < 1e-5  # VNNI (or not x86): 32-bit sums, nothing clips


def test_weight_ranges_bound_every_same_sign_pair(built: tuple[BuildReport, Path]) -> None:
    from onnx import numpy_helper

    from imgbatch.export.saturation import weight_ranges

    _, fp32 = built
    model = onnx.load(str(fp32))
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    ranges = weight_ranges(fp32)
    assert len(ranges) >= 30  # every 1x1 conv, the stem and the classifier; depthwise convs are not in it
    for name, r in ranges.items():
        w = weights[name]
        rows = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1) if w.ndim == 4 else w
        q = np.clip(np.round(rows / (r.bound[:, None] / 127)), -127, 127)
        if q.shape[1] % 2:
            q = np.concatenate([q, np.zeros((q.shape[0], 1))], axis=1)
        a, b = q[:, 0::2], q[:, 1::2]
        same = np.sign(a) * np.sign(b) > 0
        assert np.abs(np.where(same, a + b, 0)).max() <= 128, name  # 255 * 128 < 2**15
        assert (r.bound >= np.abs(rows).max(axis=1) - 1e-12).all()  # no weight is clipped


def _shipped_weight_codes(path: Path) -> list[tuple[str, np.ndarray, dict[str, int], tuple[int, ...]]]:
    """(name, int8 codes, consumer attributes, kernel) of every quantized Conv/Gemm weight in a QDQ file."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    codes = {
        n.output[0]: (n.input[0], inits[n.input[0]])
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).dtype == np.int8
    }
    found = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in codes:
            name, q = codes[node.input[1]]
            attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
            found.append((name, q.astype(np.int64), attrs, tuple(q.shape[2:])))
    return found


def test_shipped_int8_codes_cannot_saturate(built: tuple[BuildReport, Path]) -> None:
    """The codes in the file, however they were rounded: neighbours along K (1x1 convs, Gemm) or any
    two same-sign codes of a channel (other convs) add up to at most 128, so 255 * 128 fits 16 bits."""
    report, _ = built
    checked = 0
    for name, q, attrs, kernel in _shipped_weight_codes(report.path):
        if attrs.get("group", 1) > 1:
            continue  # depthwise: ORT sums in 32 bits
        rows = q.reshape(q.shape[0], -1) if q.ndim == 4 else (q if attrs.get("transB", 0) else q.T)
        if q.ndim == 2 or kernel == (1, 1):
            padded = np.concatenate([rows, np.zeros((rows.shape[0], rows.shape[1] % 2), np.int64)], axis=1)
            a, b = padded[:, 0::2], padded[:, 1::2]
            worst = np.abs(np.where(np.sign(a) == np.sign(b), a + b, 0)).max()
        else:
            top = lambda r: -np.sort(-r, axis=1)[:, :2].sum(axis=1)  # noqa: E731
            worst = max(top(np.maximum(rows, 0)).max(), top(np.maximum(-rows, 0)).max())
        assert worst <= 128, name
        checked += 1
    assert checked >= 30


def test_gptq_rounding_lowers_output_error_on_unseen_inputs() -> None:
    """On a layer whose inputs co-vary, GPTQ's codes give a smaller output error than nearest rounding
    on inputs it did not see, and keep the pair limit of saturation-safe scales."""
    from imgbatch.export.rounding import PAIR_LIMIT, _gptq
    from imgbatch.export.saturation import _pair_bound

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 64))
    seen, unseen = rng.normal(size=(4000, 64)) @ mix, rng.normal(size=(4000, 64)) @ mix
    w = rng.normal(size=(32, 64))
    scale = _pair_bound(w) / 127
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    gptq = _gptq(w, seen.T @ seen, scale, "pairs")
    error = lambda codes: float(np.mean((unseen @ (codes * scale[:, None] - w).T) ** 2))  # noqa: E731
    assert error(gptq) < 0.7 * error(nearest)
    a, b = gptq[:, 0::2], gptq[:, 1::2]
    assert np.abs(np.where(np.sign(a) == np.sign(b), a + b, 0)).max() <= PAIR_LIMIT
    assert np.array_equal(gptq, np.round(gptq)) and np.abs(gptq).max() <= 127


def test_unsafe_int8_model_runs_on_exact_kernels_where_it_would_saturate(
    built: tuple[BuildReport, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    from imgbatch.core.cpus import int8_pairs_saturate
    from imgbatch.core.modelfile import KEY_QUANTIZATION

    report, _ = built
    model = onnx.load(str(report.path))
    for prop in model.metadata_props:
        if prop.key == KEY_QUANTIZATION:
            config = json.loads(prop.value)
            config["saturation_safe"] = False
            prop.value = json.dumps(config)
    unsafe = tmp_path / "unsafe.onnx"
    onnx.save(model, str(unsafe))
    safe_session, safe_info = open_session(report.path)
    unsafe_session, unsafe_info = open_session(unsafe)
    assert safe_info.int8_saturation_safe and not unsafe_info.int8_saturation_safe

    def exact(session: object) -> bool:
        options = session.get_session_options()  # type: ignore[attr-defined]
        try:
            return bool(options.get_session_config_entry("session.x64quantprecision") == "1")
        except RuntimeError:  # not set
            return False

    assert not exact(safe_session)
    assert exact(unsafe_session) == int8_pairs_saturate()
    # Whatever the CPU, what a worker computes with the unsafe model is what the exact kernels compute.
    x = np.stack([load_tensor(p, PreprocessSpec()) for p in photos.values()])
    got = unsafe_session.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _logits(unsafe, x, True), atol=1e-5)


def test_measured_bias_correction_brings_layer_means_to_fp32(
    built: tuple[BuildReport, Path], tmp_path: Path
) -> None:
    """After measured bias correction, every INT8 layer's mean output per channel is where FP32 has it,
    on photos it measured and on photos it did not; only the int32 bias initializers change."""
    from onnx import numpy_helper

    from imgbatch.core.samples import make_variants
    from imgbatch.export.measured_bias import _layers, _stats, correct_biases
    from imgbatch.export.onnx_export import load_batch
    from imgbatch.export.quantize import prepare, quantize_int8

    _, fp32 = built
    spec = PreprocessSpec()
    calib = make_variants(tmp_path / "calib", 16, seed=0)
    unseen = load_batch(make_variants(tmp_path / "unseen", 16, seed=7), spec)
    config = get_preset("static-int8-gptq-fp32-first-block").replace(
        rounding="nearest", measured_bias_correction=False, calib_count=16
    )
    prepped = prepare(fp32, tmp_path / "prepped.onnx")
    model = quantize_int8(fp32, tmp_path / "int8.onnx", calib, config, spec, prepped_path=prepped)
    layers = _layers(onnx.load(str(model)))
    reference, _ = _stats(prepped, [la.fp32_output for la in layers], {}, unseen, "input")

    def unseen_error() -> float:
        means, _ = _stats(model, [la.read_output for la in layers], {}, unseen, "input")
        errors = [means[la.read_output] - reference[la.fp32_output] for la in layers]
        return float(np.mean([np.abs(e).mean() for e in errors]))

    def initializers() -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model)).graph.initializer}

    before, error_before = initializers(), unseen_error()
    result = correct_biases(model, prepped, calib, spec)
    after = initializers()

    assert result.layers == len(layers) > 40  # every INT8 conv and the classifier
    assert result.mean_abs_error_after < 0.2 * result.mean_abs_error_before, result
    assert unseen_error() < 0.7 * error_before
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed <= {la.bias for la in layers} and len(changed) > 40
    assert all(after[name].dtype == np.int32 for name in changed)


def test_error_sources_split_the_int8_error_into_weights_and_activations(
    built: tuple[BuildReport, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    """The two hybrids are what the report says: the FP32 graph with exactly the INT8 model's
    (dequantized) weights, and the INT8 graph with exactly FP32's weights; each lands between."""
    from collections import Counter

    from onnx import numpy_helper

    from imgbatch.export import error_sources as errs
    from imgbatch.export.onnx_export import load_batch
    from imgbatch.export.quantize import prepare, quantizable_nodes

    report, fp32 = built
    assert "INT8 weights alone" in (report.report.error_sources or "")
    prepped = prepare(fp32, tmp_path / "prepped.onnx")
    weights = errs.int8_weights_alone(prepped, report.path, tmp_path / "w.onnx")
    acts = errs.int8_activations_alone(prepped, report.path, tmp_path / "a.onnx")

    def graph(path: Path) -> tuple[Counter[str], dict[str, np.ndarray], dict[str, list[str]]]:
        model = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return (
            Counter(n.op_type for n in model.graph.node),
            inits,
            {n.name: list(n.input) for n in model.graph.node},
        )

    (ops_f, inits_f, nodes_f), (ops_w, inits_w, nodes_w) = graph(prepped), graph(weights)
    (ops_q, _, _), (ops_a, inits_a, nodes_a) = graph(report.path), graph(acts)
    quantized = errs._dequantized_params(onnx.load(str(report.path)))
    layers = [name for name, _ in quantizable_nodes(prepped)]
    assert len(quantized) == len(layers) - 3  # all but the first block (first:3)
    assert ops_w == ops_f and "QuantizeLinear" not in ops_w  # the FP32 graph, float activations
    assert ops_a["QuantizeLinear"] == ops_q["QuantizeLinear"] > 40  # every activation Q/DQ stays
    for name in layers:
        w_fp32 = inits_f[nodes_f[name][1]]
        if name not in quantized:  # the recipe's FP32 layers are FP32 in both hybrids
            assert np.array_equal(inits_w[nodes_w[name][1]], w_fp32)
            continue
        assert np.array_equal(inits_w[nodes_w[name][1]], quantized[name][0])
        assert not np.array_equal(quantized[name][0], w_fp32)
        assert np.array_equal(inits_a[nodes_a[name][1]], w_fp32)  # float weight straight into the layer

    x = load_batch(list(photos.values()), PreprocessSpec())
    ref, int8 = _logits(fp32, x, False), _logits(report.path, x, False)
    figures = errs.measure(prepped, report.path, tmp_path, lambda p: _logits(p, x, False), ref, int8)
    kl = {name: f["kl"] for name, f in figures.items()}
    assert 0 < kl["weights alone"] < kl["both"] and 0 < kl["activations alone"] < kl["both"], kl
    assert all(0.0 <= f["top1_agreement"] <= 1.0 for f in figures.values())
