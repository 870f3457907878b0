"""What one bench measures, as a typed plan: the models, the images, and the grid of pipeline jobs.

A new dimension of the grid is a field of choices on ``BenchPlan``, a field on ``PipelineCase`` and one
more loop in ``BenchPlan.int8_cases``; the rounds, the figures and the report take the cases as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgbatch.core.modelfile import ModelInfo

# The ratio lines compare the pipeline at this message batch (paths per task; onnxruntime still runs
# at most worker.classify.INFER_BATCH = 8 images per call) with the bare loop at batch 8.
PRIMARY_BATCH = 32

# Where a bench says what it is doing (the command passes its stderr console's print).
Say = Callable[[str], object]


@dataclass(frozen=True)
class PipelineCase:
    """One pipeline job of a round; the best of its rounds is one line of the table."""

    label: str  # "int8" or "fp32"
    model: Path
    workers: int  # worker processes
    batch_size: int  # paths per task message
    decode: str = "exact"  # the workers' IMGBATCH_DECODE
    runtime: str = "onnxruntime"  # the workers' IMGBATCH_RUNTIME: "onnxruntime" or "openvino"


@dataclass(frozen=True)
class BenchPlan:
    """Everything one `imgbatch bench` measures, checked by the command before any work starts."""

    directory: Path  # the images; a benchmark set is written there if it is missing or empty
    model_path: Path  # the INT8 model
    model_info: ModelInfo
    images: int  # per job
    cpus: int
    worker_counts: tuple[int, ...]  # ascending
    batch_sizes: tuple[int, ...]  # ascending
    fp32_path: Path | None  # the FP32 twin; None: no INT8-vs-FP32 comparison
    work_dir: Path  # the private Redis, database, logs and linked images
    repeat: int = 1  # rounds; each figure is the best of its rounds
    ray: bool = False  # also run the job on Ray Data
    decodes: tuple[str, ...] = ("exact",)  # the workers' decoders; the first is the ratios' one
    runtimes: tuple[str, ...] = ("onnxruntime",)  # the workers' runtimes; the first is the ratios' one

    @property
    def primary_decode(self) -> str:
        return self.decodes[0]

    @property
    def primary_runtime(self) -> str:
        return self.runtimes[0]

    @property
    def primary_workers(self) -> int:
        """The worker count of the run the ratio lines use."""
        return max(self.worker_counts)

    @property
    def primary_batch(self) -> int:
        """The message batch of the run the ratio lines use."""
        return PRIMARY_BATCH if PRIMARY_BATCH in self.batch_sizes else max(self.batch_sizes)

    def int8_cases(self) -> list[PipelineCase]:
        """The INT8 grid in the table's order: every decoder on the first runtime, the first decoder on
        the others (the decoder's cost does not depend on the runtime), by every worker count and batch
        size."""
        return [
            PipelineCase("int8", self.model_path, workers, batch_size, decode, runtime)
            for runtime in self.runtimes
            for decode in (self.decodes if runtime == self.primary_runtime else self.decodes[:1])
            for workers in self.worker_counts
            for batch_size in self.batch_sizes
        ]

    def primary_case(self, decode: str | None = None, runtime: str | None = None) -> PipelineCase:
        """The run the ratio lines use (of ``decode`` and ``runtime``; by default the first of each)."""
        return PipelineCase(
            "int8",
            self.model_path,
            self.primary_workers,
            self.primary_batch,
            decode or self.primary_decode,
            runtime or self.primary_runtime,
        )

    def fp32_case(self) -> PipelineCase | None:
        """The FP32 twin at the primary workers and batch, the other side of the INT8 / FP32 ratio."""
        if self.fp32_path is None:
            return None
        return PipelineCase(
            "fp32",
            self.fp32_path,
            self.primary_workers,
            self.primary_batch,
            self.primary_decode,
            self.primary_runtime,
        )

    def round_cases(self) -> list[PipelineCase]:
        """The pipeline jobs of one round: the ratios' runs first (right after the bare loops they are
        compared with), then the rest of the grid, then FP32."""
        primaries = {self.primary_case(decode=d) for d in self.decodes} | {
            self.primary_case(runtime=r) for r in self.runtimes
        }
        cases = sorted(self.int8_cases(), key=lambda case: case not in primaries)
        fp32 = self.fp32_case()
        return cases if fp32 is None else [*cases, fp32]
