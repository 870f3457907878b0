"""The FP32 twin of an INT8 model, carrying the same imgbatch contract, for the INT8-vs-FP32 comparison."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from imgbatch.core import modelfile
from imgbatch.core.errors import ModelFileError, UserError


def fp32_sibling(model: Path) -> Path:
    """Where the FP32 twin of ``model`` lives by default: beside it, ``.int8.`` read as ``.fp32.``."""
    name = model.name
    return model.with_name(
        name.replace(".int8.", ".fp32.") if ".int8." in name else f"{model.stem}.fp32.onnx"
    )


def check_fp32_twin(fp32_path: Path, info: modelfile.ModelInfo, model_path: Path) -> None:
    """The FP32 model must be an imgbatch model that reads images as the INT8 one does."""
    twin = modelfile.read_model_info(fp32_path)
    for what in ("labels", "preprocess"):
        if getattr(twin, what) != getattr(info, what):
            raise ModelFileError(
                f"{fp32_path} is not an FP32 twin of {model_path}: its {what} differ "
                "(give --fp32-model, or remove it to have it exported)"
            )


def attach_contract(raw_fp32: Path, like: Path, output: Path) -> Path:
    """Write ``raw_fp32`` to ``output`` with the metadata of the imgbatch model ``like`` (labels,
    preprocessing, ...), marked unquantized and with its own graph hash. Needs the ``onnx`` package."""
    try:
        import onnx

        from imgbatch.export.metadata import graph_sha256
    except ImportError as exc:
        raise UserError("the FP32 model needs the export extra: pip install 'imgbatch[export]'") from exc
    info = modelfile.read_model_info(like)
    model = onnx.load(str(raw_fp32))
    props = dict(info.extra)
    props.update(
        {
            modelfile.KEY_FORMAT: modelfile.FORMAT_VERSION,
            modelfile.KEY_LABELS: json.dumps(info.labels),
            modelfile.KEY_PREPROCESS: info.preprocess.to_json(),
            modelfile.KEY_INPUT_SIZE: json.dumps(list(info.input_size)),
            modelfile.KEY_OUTPUT: info.output,
            modelfile.KEY_QUANTIZATION: "none",
        }
    )
    del model.metadata_props[:]
    props[modelfile.KEY_GRAPH_SHA256] = graph_sha256(model)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, output)
    return output


def ensure_fp32_model(int8_model: Path, output: Path) -> Path:
    """``output`` if it exists, else export the default model to FP32 ONNX again (checked against
    torch on photos; needs the export extra) and give it ``int8_model``'s contract."""
    if output.is_file():
        return output
    try:
        from imgbatch.export.onnx_export import check_parity, export_any
        from imgbatch.export.sources import load_source
    except ImportError as exc:
        raise UserError(
            "no FP32 model: pass --fp32-model PATH, or install the export extra to build one"
        ) from exc
    from imgbatch.core.samples import write_photos

    with tempfile.TemporaryDirectory(prefix="imgbatch-fp32-") as work:
        source = load_source()
        raw = export_any(source.model, Path(work) / "fp32.onnx", image_size=source.spec.crop)
        check_parity(source.model, raw, write_photos(Path(work) / "photos"), source.spec)
        return attach_contract(raw, int8_model, output)
