"""``--auto``: find the fastest quantization recipe that passes the gate.

Every trial keeps the recipe's own FP32 nodes (e.g. EfficientNet-Lite0's ``first:3``) and adds to them.

The search sees only its own photos (``build``: the ``--calib`` images when given, else other variants
of the natural photos, ``evalset.search_set``), never the evaluation photos: choosing the best of 8
candidates by a figure good to +-0.5% would otherwise bias the very figure the gate then checks.

1. Sensitivity: for every layer the recipe quantizes, quantize everything *except* that layer (calibration
   ranges are computed once and cached) and measure how much KL divergence to FP32 that saves on a
   subset of the search photos.
2. Candidates: the recipe as given, then with the 1, 2, 4 and 8 most sensitive layers kept in FP32,
   with first conv + classifier in FP32, and with the other weight rounding (nearest <-> GPTQ,
   export.rounding), alone and with first conv + classifier in FP32; each calibrated afresh,
   measured on all search photos (top-1 agreement) and for speed against FP32 ONNX at batch 8
   on one thread. The chosen candidate's file is the one that ships: no re-quantization after the
   search.
3. Choice: the fastest candidate that meets the agreement threshold (and the speed threshold) on the
   search photos; if none does, the most accurate one. The gate then measures it on the evaluation
   photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export import report as rep
from export.quantize import (
    CLASSIFIER,
    FIRST_CONV,
    QuantConfig,
    config_bias_deltas,
    quantizable_nodes,
    quantize_int8,
    resolve_keep_fp32,
    safe_weight_ranges,
)
from imgbatch.core.modelfile import inference_session
from imgbatch.core.preprocess import PreprocessSpec


def _run(path: Path, x: np.ndarray, exact: bool = False) -> np.ndarray:
    session = inference_session(path, rep.all_cores(), exact)
    return np.concatenate([session.run(None, {"input": x[i : i + 16]})[0] for i in range(0, len(x), 16)])


def search(
    fp32: Path,
    prepped: Path,
    work: Path,
    calib_paths: Sequence[Path],
    config: QuantConfig,
    spec: PreprocessSpec,
    x_search: np.ndarray,
    reference: np.ndarray,
    thresholds: rep.Thresholds,
    budget: float = 2.0,
    subset: int = 64,
) -> tuple[QuantConfig, dict[str, Any], Path]:
    """Returns the chosen recipe, what the search saw, and the chosen model file: the very file
    that was measured, so what ``--auto`` reports is what ships."""
    from export.build import _speed_ratio, exact_int8

    # The scan rounds to nearest and skips measured bias correction whatever the recipe says: it only
    # ranks layers, and GPTQ or a measured correction per trial would cost 15-60 s each. Analytic bias
    # shifts are measured once: each depends only on its own node, so a trial that keeps nodes in FP32
    # just leaves their biases alone (apply_bias_deltas(skip=...)).
    scan_config = config.replace(rounding="nearest", measured_bias_correction=False)
    deltas = (
        config_bias_deltas(prepped, calib_paths, spec, scan_config, safe_weight_ranges(prepped, scan_config))
        if config.bias_correction
        else {}
    )
    exact = exact_int8(config)
    cache = work / "auto.calib.json"
    xs, refs = x_search[:subset], reference[:subset]
    # Every trial keeps what the recipe already keeps in FP32 (e.g. EfficientNet-Lite0's first:3)
    # and adds its own nodes to it.
    given = tuple(resolve_keep_fp32(prepped, config.keep_fp32))

    def scan_quantize(keep: tuple[str, ...], out: Path) -> Path:
        from export.biascorr import apply_bias_deltas

        base = prepped
        keep = config.keeping_fp32(keep).keep_fp32
        if deltas:
            skip = resolve_keep_fp32(prepped, keep)
            base = apply_bias_deltas(prepped, work / "auto.base.onnx", deltas, skip=skip)
        trial = scan_config.replace(bias_correction=False, keep_fp32=keep)
        # Reuses the first calibration's ranges: they barely move when one layer stays FP32.
        return quantize_int8(fp32, out, calib_paths, trial, spec, cache_path=cache, prepped_path=base)

    def candidate(keep: tuple[str, ...], rounding: str, out: Path) -> Path:
        # The full recipe, calibrated afresh, exactly as it would ship.
        recipe = config.keeping_fp32(keep).replace(rounding=rounding)
        return quantize_int8(fp32, out, calib_paths, recipe, spec, prepped_path=prepped)

    scan = work / "auto.scan.onnx"
    base_kl = rep.kl_divergence(refs, _run(scan_quantize((), scan), xs, exact))
    sensitivity: list[dict[str, Any]] = []
    for name, op in quantizable_nodes(prepped):
        if name in given:
            continue
        kl = rep.kl_divergence(refs, _run(scan_quantize((name,), scan), xs, exact))
        sensitivity.append({"node": name, "op": op, "gain": round(base_kl - kl, 5)})
    sensitivity.sort(key=lambda item: -float(item["gain"]))
    helpful = [str(item["node"]) for item in sensitivity if float(item["gain"]) > 0]

    ends = (FIRST_CONV, CLASSIFIER)
    options: list[tuple[str, tuple[str, ...], str]] = [("as given", (), config.rounding)]
    for k in (1, 2, 4, 8):
        if k <= len(helpful):
            options.append((f"{k} most sensitive in FP32", tuple(helpful[:k]), config.rounding))
    options.append(("first conv + classifier in FP32", ends, config.rounding))
    if config.per_channel and config.weight_type == "QInt8" and not config.reduce_range:
        other = "nearest" if config.rounding == "gptq" else "gptq"
        options.append((f"{other} rounding", (), other))
        options.append((f"{other} rounding, first conv + classifier in FP32", ends, other))
    candidates: list[dict[str, Any]] = []
    for i, (label, keep, rounding) in enumerate(options):
        path = candidate(keep, rounding, work / f"auto.candidate{i}.onnx")
        logits = _run(path, x_search, exact)
        agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        ratio = _speed_ratio(fp32, path, x_search[:8], budget, exact)
        passes = agreement >= thresholds.min_agreement and ratio >= thresholds.min_speedup
        candidates.append(
            {
                "name": label,
                "keep_fp32": list(config.keeping_fp32(keep).keep_fp32),
                "rounding": rounding,
                "agreement": agreement,
                "speedup": round(ratio, 3),
                "passes": passes,
                "path": str(path),
            }
        )
        figures = f"top-1 agreement {agreement:.1%} on the search photos, {ratio:.2f}x FP32 ONNX"
        print(f"  --auto: {label}: {figures}", flush=True)
    passing = [c for c in candidates if c["passes"]]
    best = (
        max(passing, key=lambda c: c["speedup"])
        if passing
        else max(candidates, key=lambda c: (c["agreement"], c["speedup"]))
    )
    speed0 = candidates[0]["speedup"]
    chosen = config.replace(
        name=f"{config.name}+auto", keep_fp32=tuple(best["keep_fp32"]), rounding=best["rounding"]
    )
    info = {
        "base_kl": round(base_kl, 5),
        "sensitivity": sensitivity,
        "candidates": [{k: v for k, v in c.items() if k != "path"} for c in candidates],
        "chosen": f"{best['name']} ({'passes' if best['passes'] else 'best available, fails the gate'}; "
        f"agreement {best['agreement']:.1%}, {best['speedup']:.2f}x FP32, speed cost vs "
        f"'as given' {1 - float(best['speedup']) / float(speed0):+.1%})",
    }
    return chosen, info, Path(best["path"])
