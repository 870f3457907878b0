"""Do the decoders give the model the reference input? Bit-identity, tensor difference, top-1 agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgbatch.core import preprocess


def decoder_parity(model: Path, paths: list[Path], limit: int = 200, batch: int = 16) -> dict[str, Any]:
    """Each decoder (``exact``, ``fast``) against the reference preprocessing on up to ``limit`` JPEGs.

    Differences are in 0-255 pixel levels (the tensor difference times std * 255); agreement is the
    model's top-1 on the decoder's input against its top-1 on the reference input.
    """
    from imgbatch.core.modelfile import open_session

    session, info = open_session(model, 1)
    spec = info.preprocess
    levels = float(np.mean(spec.std)) * 255.0
    rows: dict[str, list[np.ndarray]] = {"reference": [], **{d: [] for d in preprocess.DECODERS}}
    for path in paths:
        if len(rows["reference"]) >= limit:
            break
        if path.suffix.lower() not in (".jpg", ".jpeg"):
            continue
        try:
            tensors: dict[str, np.ndarray] = {"reference": preprocess.load_reference_tensor(path, spec)}
            for decode in preprocess.DECODERS:
                tensors[decode] = preprocess.load_tensor(path, spec, decode=decode)
        except preprocess.ImageDecodeError:
            continue
        for name, tensor in tensors.items():
            rows[name].append(tensor)
    images = len(rows["reference"])
    if not images:
        return {"images": 0, "decoders": {}}
    name = session.get_inputs()[0].name
    top1 = {
        d: np.concatenate(
            [
                session.run(None, {name: np.stack(r[i : i + batch])})[0].argmax(axis=1)
                for i in range(0, images, batch)
            ]
        )
        for d, r in rows.items()
    }
    out = {}
    for decode in preprocess.DECODERS:
        diffs = [
            float(np.abs(a - b).mean()) * levels for a, b in zip(rows[decode], rows["reference"], strict=True)
        ]
        out[decode] = {
            "identical": sum(
                np.array_equal(a, b) for a, b in zip(rows[decode], rows["reference"], strict=True)
            ),
            "top1_agreement": float(np.mean(top1[decode] == top1["reference"])),
            "mean_abs_diff_levels": float(np.mean(diffs)),
            "max_image_mean_abs_diff_levels": float(np.max(diffs)),
        }
    return {"images": images, "decoders": out}
