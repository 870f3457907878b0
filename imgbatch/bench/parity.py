"""Do the two decoders give the model the same input? Tensor difference and top-1 agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgbatch.core import preprocess


def decoder_parity(model: Path, paths: list[Path], limit: int = 200, batch: int = 16) -> dict[str, Any]:
    """Fast path vs Pillow on up to ``limit`` files that the fast path takes (plain JPEGs).

    Differences are in 0-255 pixel levels (the tensor difference times std * 255).
    """
    from imgbatch.core.modelfile import open_session

    session, info = open_session(model, 1)
    spec = info.preprocess
    levels = float(np.mean(spec.std)) * 255.0
    fast_rows: list[np.ndarray] = []
    pillow_rows: list[np.ndarray] = []
    diffs: list[float] = []
    for path in paths:
        if len(fast_rows) >= limit:
            break
        try:
            fast = preprocess._load_jpeg_fast(path, spec, preprocess.DEFAULT_MAX_PIXELS)
            if fast is None:
                continue
            slow = preprocess.load_tensor_pillow(path, spec)
        except preprocess.ImageDecodeError:
            continue
        fast_rows.append(fast)
        pillow_rows.append(slow)
        diffs.append(float(np.abs(fast - slow).mean()) * levels)
    if not fast_rows:
        return {"images": 0, "top1_agreement": None, "mean_abs_diff_levels": None}
    name = session.get_inputs()[0].name
    agree = 0
    for first in range(0, len(fast_rows), batch):
        a = session.run(None, {name: np.stack(fast_rows[first : first + batch])})[0]
        b = session.run(None, {name: np.stack(pillow_rows[first : first + batch])})[0]
        agree += int((a.argmax(axis=1) == b.argmax(axis=1)).sum())
    return {
        "images": len(fast_rows),
        "top1_agreement": agree / len(fast_rows),
        "mean_abs_diff_levels": float(np.mean(diffs)),
        "max_image_mean_abs_diff_levels": float(np.max(diffs)),
    }
