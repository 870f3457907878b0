"""Charts drawn by matplotlib (Agg, no pyplot state) and returned as SVG documents."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from imgbatch.db.stats import Throughput, percentile

STAGE_TITLES = {
    "queue_ms": "queue wait",
    "decode_ms": "decode",
    "infer_ms": "inference",
    "persist_ms": "persist",
}
_RC: Any = {  # (matplotlib types the keys as a Literal of every rcParam)
    "svg.fonttype": "none",  # text stays text: smaller files, the browser's own sans-serif font
    "svg.hashsalt": "imgbatch",  # stable element ids, so the same data gives the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
MAX_WORKER_LINES = 12


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _render(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def stage_histograms(samples: dict[str, list[float]]) -> str | None:
    """One latency histogram per stage (2 x 2), with the median and p95 marked."""
    if not any(samples.values()):
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(9, 5.2))
        axes = fig.subplots(2, 2)
        for ax, (stage, title) in zip(axes.flat, STAGE_TITLES.items(), strict=True):
            values = samples.get(stage) or []
            if not values:
                ax.set_title(f"{title}: no data")
                ax.set_axis_off()
                continue
            p50, p95 = percentile(values, 50), percentile(values, 95)
            low, high = min(values), max(values)
            positive = [v for v in values if v > 0]
            if positive and high / max(min(positive), 1e-3) > 50:
                # Spread over orders of magnitude: log-spaced bins on a log axis.
                floor = max(min(positive), 1e-3)
                bins = [floor * (high / floor) ** (i / 40) for i in range(41)]
                ax.hist([max(v, floor) for v in values], bins=bins, color="#4c72b0")
                ax.set_xscale("log")
            else:
                ax.hist(values, bins=40 if high > low else 1, color="#4c72b0")
            ax.axvline(p50, color="#dd8452", linestyle="--", linewidth=1, label=f"median {p50:.1f} ms")
            ax.axvline(p95, color="#c44e52", linestyle=":", linewidth=1.2, label=f"p95 {p95:.1f} ms")
            ax.set_title(f"{title} (n={len(values)})")
            ax.set_xlabel("ms per image")
            ax.set_ylabel("images")
            ax.legend(frameon=False, fontsize=8)
        fig.tight_layout()
        return _render(fig)


def throughput_chart(th: Throughput) -> str | None:
    """Images/s over time: one line per worker and the sum of all of them."""
    if not th.buckets:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(9, 3.4))
        ax = fig.subplots()
        # Each bucket drawn over its whole width: repeat the last value at the end of the axis.
        end = th.buckets * th.bucket_seconds
        xs = [*th.bucket_starts(), end]
        busiest = sorted(th.counts, key=lambda w: -sum(th.counts[w]))
        for worker in busiest[:MAX_WORKER_LINES]:
            rates = th.rates(worker)
            ax.step(xs, [*rates, rates[-1]], where="post", linewidth=1.2, label=worker)
        if len(th.counts) > 1:
            total = th.total_rates()
            ax.step(xs, [*total, total[-1]], where="post", color="black", linewidth=1.6, label="all workers")
        ax.set_xlim(0, end)
        hidden = len(busiest) - MAX_WORKER_LINES
        ax.set_title(
            f"images/s per worker ({th.bucket_seconds:.3g} s buckets)"
            + (f"; {hidden} quieter workers not drawn" if hidden > 0 else "")
        )
        ax.set_xlabel("seconds since the job was submitted")
        ax.set_ylabel("images/s")
        ax.set_ylim(bottom=0)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        return _render(fig)


def score_histogram(scores: Sequence[float]) -> str | None:
    """How confident the model was: top-1 scores of the successful images."""
    if not scores:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.4, 3.0))
        ax = fig.subplots()
        ax.hist(scores, bins=[i / 20 for i in range(21)], color="#55a868")
        ax.set_title(f"top-1 score (n={len(scores)})")
        ax.set_xlabel("score")
        ax.set_ylabel("images")
        ax.set_xlim(0, 1)
        fig.tight_layout()
        return _render(fig)


def label_bars(counts: Sequence[tuple[str, int]]) -> str | None:
    """The most frequent labels as horizontal bars, largest on top."""
    if not counts:
        return None
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.4, max(1.6, 0.22 * len(counts) + 0.8)))
        ax = fig.subplots()
        labels = [_short(label) for label, _ in counts][::-1]
        ax.barh(labels, [n for _, n in counts][::-1], color="#8172b3")
        ax.set_title(f"top {len(counts)} labels")
        ax.set_xlabel("images")
        top = max(n for _, n in counts)
        ax.set_xlim(0, top * 1.05 if top else 1)
        if top < 10:
            ax.set_xticks(range(0, top + 1, max(1, math.ceil(top / 5))))
        fig.tight_layout()
        return _render(fig)


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
