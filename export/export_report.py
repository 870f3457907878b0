"""The export report: what was built, measured and decided, as one typed object.

It is written beside the model as ``<stem>.report.md`` (for people) and ``<stem>.report.json`` (for
machines), and printed by ``imgbatch export`` whether the gate passed or not.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imgbatch.core.errors import UserError
from imgbatch.export.auto import AutoSearch
from imgbatch.export.onnx_export import ParityReport
from imgbatch.export.quantize import QuantConfig
from imgbatch.export.report import GateResult, Row, Thresholds


class ReportedFailure(UserError):
    """The export failed after writing its report, and installed nothing; ``report_text`` (the
    Markdown) says what was measured, so the command prints it before the one-line error."""

    def __init__(self, message: str, report_text: str) -> None:
        super().__init__(message)
        self.report_text = report_text


class GateRefused(ReportedFailure):
    """The INT8 model failed the gate; nothing was installed at the output path."""


# (key in the JSON, label in the Markdown) of the report's one-line facts, in the Markdown's order.
FACTS = (
    ("output", "Output"),
    ("parity", "Parity (FP32 ONNX vs PyTorch)"),
    ("quantization", "Quantization"),
    ("calibration", "Calibration"),
    ("evaluation", "Evaluation"),
    ("decoders", "Decoders"),
    ("error_sources", "Error sources"),
    ("machine", "Machine"),
)


@dataclass(frozen=True)
class GateDecision:
    result: GateResult
    enforced: bool  # False with --no-gate: the model is installed whatever the verdict
    thresholds: Thresholds
    runtime: str = "onnxruntime"  # the runtime whose rows were gated, and why it is the one

    @property
    def refuses(self) -> bool:
        return self.enforced and not self.result.passed

    def to_dict(self) -> dict[str, Any]:
        verdict = "PASSED" if self.result.passed else "REFUSED"
        return {
            "verdict": verdict + ("" if self.enforced else " (gate off)"),
            "runtime": self.runtime,
            "checks": self.result.checks,
            "thresholds": asdict(self.thresholds),
        }


@dataclass(frozen=True)
class ExportReport:
    source: str  # the checkpoint, as export.sources.Source.describe says
    output: Path
    parity: ParityReport
    config: QuantConfig
    calibration: str
    evaluation: str
    machine: str
    rows: list[Row]
    ratios: list[str]
    graph_sha256: str
    source_sha256: str
    decoders: str | None = None
    error_sources: str | None = None
    auto: AutoSearch | None = None
    gate: GateDecision | None = None  # None: no INT8 model, nothing to gate

    @property
    def installed(self) -> bool:
        return self.gate is None or not self.gate.refuses

    def to_dict(self) -> dict[str, Any]:
        """The report as ``<stem>.report.json`` holds it."""
        return {
            "source": self.source,
            "output": str(self.output) if self.installed else f"{self.output} (NOT written: gate refused)",
            "parity": self.parity.describe(),
            "quantization": self.config.describe(),
            "calibration": self.calibration,
            "evaluation": self.evaluation,
            "decoders": self.decoders,
            "error_sources": self.error_sources,
            "machine": self.machine,
            "rows": [_row_dict(row) for row in self.rows],
            "ratios": self.ratios,
            "auto": None if self.auto is None else self.auto.to_dict(),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "config": json.loads(self.config.to_json()),
            "graph_sha256": self.graph_sha256,
            "source_sha256": self.source_sha256,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    def markdown(self) -> str:
        """The report as ``<stem>.report.md`` holds it and ``imgbatch export`` prints it."""
        facts = self.to_dict()
        lines = [f"# Export report: {self.source}", ""]
        lines += [f"- **{label}**: {facts[key]}" for key, label in FACTS if facts[key]]
        lines += ["", *_table(self.rows), ""]
        lines += [f"- {note}" for note in self.ratios]
        if self.auto is not None:
            lines += _auto_section(self.auto)
        if self.gate is not None:
            lines += [
                "",
                f"## Gate: {self.gate.to_dict()['verdict']}",
                "",
                f"Applied to the runtime workers will use: {self.gate.runtime}",
                "",
            ]
            lines += [
                f"- {'PASS' if ok else 'FAIL'} {figure}: {detail}"
                for figure, detail, ok in self.gate.result.checks
            ]
        return "\n".join(lines) + "\n"

    def write(self, md_path: Path, json_path: Path) -> str:
        """Write both files (each atomically); returns the Markdown."""
        text = self.markdown()
        for path, content in ((md_path, text), (json_path, self.to_json() + "\n")):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(content)
            os.replace(tmp, path)
        return text


def _row_dict(row: Row) -> dict[str, Any]:
    data = asdict(row)
    for lat, obj in zip(data["latency"], row.latency, strict=True):
        lat["images_per_s"] = round(obj.images_per_s, 2)
    return data


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(rows: list[Row]) -> list[str]:
    """One line per model: size, latency per (batch, threads), images/s at batch 8, accuracy."""
    configs = sorted({(lat.batch, lat.threads) for row in rows for lat in row.latency})
    batch8 = [(b, t) for b, t in configs if b == 8]
    head = ["model", "size MB"]
    head += [f"b{batch} {threads}T p50/p95 ms" for batch, threads in configs]
    head += [f"img/s b{b} {t}T" for b, t in batch8]
    head += ["top-1 agree", "top-5 overlap", "top-1 acc", "top-5 acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name, _fmt(row.size_mb, ".2f")]
        for batch, threads in configs:
            lat = row.latency_at(batch, threads)
            cells.append(f"{lat.p50_ms:.1f} / {lat.p95_ms:.1f}" if lat else "-")
        for batch, threads in batch8:
            lat = row.latency_at(batch, threads)
            cells.append(f"{lat.images_per_s:.1f}" if lat else "-")
        cells += [
            _fmt(row.top1_agreement, ".1%"),
            _fmt(row.top5_overlap, ".1%"),
            _fmt(row.top1_accuracy, ".1%"),
            _fmt(row.top5_accuracy, ".1%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _auto_section(auto: AutoSearch) -> list[str]:
    lines = [
        "",
        "## --auto search",
        "",
        f"Candidates ranked on {auto.search_photos}; the table above and the gate measure the evaluation "
        "photos.",
        "",
        "| recipe | FP32 nodes | top-1 agree (search photos) | speed-up b8 1T | passes |",
        "|---|---|---|---|---|",
    ]
    for c in auto.candidates:
        passes = "yes" if c.passes else "no"
        lines.append(f"| {c.name} | {len(c.keep_fp32)} | {c.agreement:.1%} | {c.speedup:.2f}x | {passes} |")
    lines += ["", f"Chosen: {auto.chosen}"]
    if auto.sensitivity:
        lines += ["", "Most sensitive layers (leave-one-out, KL divergence to FP32 saved):", ""]
        lines += [f"- {item.node} ({item.op}): {item.gain:+.4f}" for item in auto.sensitivity[:8]]
    return lines
