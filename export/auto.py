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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgbatch.core.preprocess import PreprocessSpec
from imgbatch.export.biascorr import apply_bias_deltas
from imgbatch.export.measure import speed_ratio
from imgbatch.export.quantize import (
    CLASSIFIER,
    FIRST_CONV,
    QuantConfig,
    config_bias_deltas,
    quantizable_nodes,
    quantize_int8,
    resolve_keep_fp32,
    safe_weight_ranges,
)
from imgbatch.export.report import Thresholds, all_cores, kl_divergence
from imgbatch.export.runners import exact_int8, logits, onnx_runner


@dataclass(frozen=True)
class SearchPhotos:
    """The photos the candidates are ranked on: never the evaluation photos (see above)."""

    x: np.ndarray
    reference: np.ndarray  # PyTorch eager FP32 logits on ``x``
    description: str  # for the report: how many photos, and which


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op: str
    gain: float  # KL divergence to FP32 saved by leaving this node (alone) in FP32


@dataclass(frozen=True)
class Candidate:
    name: str
    keep_fp32: list[str]
    rounding: str
    agreement: float  # top-1 agreement with FP32 on the search photos
    speedup: float  # FP32 ONNX / candidate latency, batch 8, one thread
    passes: bool


@dataclass(frozen=True)
class AutoSearch:
    """What ``--auto`` measured and chose, for the export report."""

    base_kl: float
    sensitivity: list[LayerSensitivity]
    candidates: list[Candidate]
    chosen: str
    search_photos: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A candidate before it is measured: (name, nodes it adds in FP32, weight rounding).
Recipe = tuple[str, tuple[str, ...], str]


@dataclass
class _Trials:
    """Quantizes variants of one recipe of one model; every file it writes lands in ``work``."""

    fp32: Path
    prepped: Path
    work: Path
    calib_paths: Sequence[Path]
    config: QuantConfig
    spec: PreprocessSpec
    exact: bool = field(init=False)
    scan_config: QuantConfig = field(init=False)
    deltas: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.exact = exact_int8(self.config)
        # The scan rounds to nearest and skips measured bias correction whatever the recipe says: it
        # only ranks layers, and GPTQ or a measured correction per trial would cost 15-60 s each.
        # Analytic bias shifts are measured once: each depends only on its own node, so a trial that
        # keeps nodes in FP32 just leaves their biases alone (apply_bias_deltas(skip=...)).
        self.scan_config = self.config.replace(rounding="nearest", measured_bias_correction=False)
        self.deltas = {}
        if self.config.bias_correction:
            ranges = safe_weight_ranges(self.prepped, self.scan_config)
            self.deltas = config_bias_deltas(
                self.prepped, self.calib_paths, self.spec, self.scan_config, ranges
            )

    def scan(self, keep: tuple[str, ...]) -> Path:
        """The cheap scan variant of the recipe with ``keep`` in FP32 too (one file, overwritten)."""
        base = self.prepped
        keep = self.config.keeping_fp32(keep).keep_fp32
        if self.deltas:
            skip = resolve_keep_fp32(self.prepped, keep)
            base = apply_bias_deltas(self.prepped, self.work / "auto.base.onnx", self.deltas, skip=skip)
        trial = self.scan_config.replace(bias_correction=False, keep_fp32=keep)
        out, cache = self.work / "auto.scan.onnx", self.work / "auto.calib.json"
        # Reuses the first calibration's ranges: they barely move when one layer stays FP32.
        return quantize_int8(
            self.fp32, out, self.calib_paths, trial, self.spec, cache_path=cache, prepped_path=base
        )

    def candidate(self, index: int, recipe: Recipe) -> Path:
        """The full recipe, calibrated afresh, exactly as it would ship."""
        _, keep, rounding = recipe
        config = self.config.keeping_fp32(keep).replace(rounding=rounding)
        out = self.work / f"auto.candidate{index}.onnx"
        return quantize_int8(self.fp32, out, self.calib_paths, config, self.spec, prepped_path=self.prepped)

    def run(self, path: Path, x: np.ndarray) -> np.ndarray:
        return logits(onnx_runner(path, all_cores(), self.exact), x)


def search(
    fp32: Path,
    prepped: Path,
    work: Path,
    calib_paths: Sequence[Path],
    config: QuantConfig,
    spec: PreprocessSpec,
    photos: SearchPhotos,
    thresholds: Thresholds,
    budget: float = 2.0,
    subset: int = 64,
) -> tuple[QuantConfig, AutoSearch, Path]:
    """Returns the chosen recipe, what the search saw, and the chosen model file: the very file
    that was measured, so what ``--auto`` reports is what ships."""
    trials = _Trials(fp32, prepped, work, calib_paths, config, spec)
    base_kl, sensitivity = _sensitivity(trials, photos.x[:subset], photos.reference[:subset])
    helpful = [item.node for item in sensitivity if item.gain > 0]
    candidates: list[Candidate] = []
    files: list[Path] = []
    for index, recipe in enumerate(_recipes(config, helpful)):
        files.append(trials.candidate(index, recipe))
        candidates.append(_measure(trials, recipe, files[-1], photos, thresholds, budget))
    best = _choose(candidates)
    chosen = config.replace(
        name=f"{config.name}+auto",
        keep_fp32=tuple(candidates[best].keep_fp32),
        rounding=candidates[best].rounding,
    )
    choice = _describe_choice(candidates[best], as_given=candidates[0])
    record = AutoSearch(round(base_kl, 5), sensitivity, candidates, choice, photos.description)
    return chosen, record, files[best]


def _sensitivity(
    trials: _Trials, x: np.ndarray, reference: np.ndarray
) -> tuple[float, list[LayerSensitivity]]:
    """KL divergence to FP32 of the scan variant, and what leaving each layer it quantizes in FP32
    saves, most first."""
    # Every trial keeps what the recipe already keeps in FP32 (e.g. EfficientNet-Lite0's first:3)
    # and adds its own nodes to it.
    given = set(resolve_keep_fp32(trials.prepped, trials.config.keep_fp32))
    base_kl = kl_divergence(reference, trials.run(trials.scan(()), x))
    sensitivity: list[LayerSensitivity] = []
    for name, op in quantizable_nodes(trials.prepped):
        if name in given:
            continue
        kl = kl_divergence(reference, trials.run(trials.scan((name,)), x))
        sensitivity.append(LayerSensitivity(name, op, round(base_kl - kl, 5)))
    sensitivity.sort(key=lambda item: -item.gain)
    return base_kl, sensitivity


def _recipes(config: QuantConfig, helpful: list[str]) -> list[Recipe]:
    """The candidates, the recipe as given first; ``helpful``: layers worth FP32, most first."""
    ends = (FIRST_CONV, CLASSIFIER)
    recipes: list[Recipe] = [("as given", (), config.rounding)]
    for k in (1, 2, 4, 8):
        if k <= len(helpful):
            recipes.append((f"{k} most sensitive in FP32", tuple(helpful[:k]), config.rounding))
    recipes.append(("first conv + classifier in FP32", ends, config.rounding))
    if config.per_channel and config.weight_type == "QInt8" and not config.reduce_range:
        other = "nearest" if config.rounding == "gptq" else "gptq"
        recipes.append((f"{other} rounding", (), other))
        recipes.append((f"{other} rounding, first conv + classifier in FP32", ends, other))
    return recipes


def _measure(
    trials: _Trials, recipe: Recipe, path: Path, photos: SearchPhotos, thresholds: Thresholds, budget: float
) -> Candidate:
    label, keep, rounding = recipe
    agreement = float(np.mean(trials.run(path, photos.x).argmax(1) == photos.reference.argmax(1)))
    ratio = speed_ratio(trials.fp32, path, photos.x[:8], budget, trials.exact)
    passes = agreement >= thresholds.min_agreement and ratio >= thresholds.min_speedup
    print(
        f"  --auto: {label}: top-1 agreement {agreement:.1%} on the search photos, {ratio:.2f}x FP32 ONNX",
        flush=True,
    )
    keep_fp32 = list(trials.config.keeping_fp32(keep).keep_fp32)
    return Candidate(label, keep_fp32, rounding, agreement, round(ratio, 3), passes)


def _choose(candidates: list[Candidate]) -> int:
    """Index of the fastest candidate that passes; if none does, of the most accurate one."""
    passing = [i for i, c in enumerate(candidates) if c.passes]
    if passing:
        return max(passing, key=lambda i: candidates[i].speedup)
    return max(range(len(candidates)), key=lambda i: (candidates[i].agreement, candidates[i].speedup))


def _describe_choice(best: Candidate, as_given: Candidate) -> str:
    verdict = "passes" if best.passes else "best available, fails the gate"
    return (
        f"{best.name} ({verdict}; agreement {best.agreement:.1%}, {best.speedup:.2f}x FP32, "
        f"speed cost vs 'as given' {1 - best.speedup / as_given.speedup:+.1%})"
    )
