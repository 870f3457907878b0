"""Running a bench plan: the image set, the FP32 twin, the rounds, the decoders' parity, the figures."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnxruntime

from imgbatch.bench.bare import bare_loop
from imgbatch.bench.figures import Run, decode_ratios, ratio_figures, runtime_figures, target_checks
from imgbatch.bench.images import describe, job_images
from imgbatch.bench.models import ensure_fp32_model
from imgbatch.bench.parity import decoder_parity
from imgbatch.bench.pipeline import WARMUP_IMAGES_PER_PROCESS, private_services, run_pipeline, warmup_dir
from imgbatch.bench.plan import BenchPlan, PipelineCase, Say
from imgbatch.core.runtimes import openvino_version
from imgbatch.worker.classify import INFER_BATCH


@dataclass
class Rounds:
    """What the rounds measured: the best of each bare loop and pipeline case (every rate seen is kept in
    its ``all_images_per_s``), every pipeline job, and the database the jobs wrote to."""

    bare: dict[str, Run] = field(default_factory=dict)
    best: dict[PipelineCase, Run] = field(default_factory=dict)
    jobs: list[Run] = field(default_factory=list)
    database: str = ""


@contextlib.contextmanager
def work_directory(keep: Path | None) -> Iterator[Path]:
    """``keep`` (made if missing), or else a temporary directory removed at the end."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="imgbatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run_bench(plan: BenchPlan, say: Say) -> dict[str, Any]:
    """Every figure of ``plan``, as `imgbatch bench --json` prints them (but ``work_dir``)."""
    started = time.monotonic()
    found, job_dir = job_images(plan.directory, plan.images, plan.work_dir, say)
    if plan.fp32_path is not None and not plan.fp32_path.is_file():
        say(f"exporting the FP32 twin of the model to {plan.fp32_path} (once) ...")
        plan = replace(plan, fp32_path=ensure_fp32_model(plan.model_path, plan.fp32_path))
    rounds = run_rounds(plan, found, job_dir, say)
    parity = decoder_parity(plan.model_path, found)
    return _result(plan, found, rounds, parity, started)


def run_rounds(plan: BenchPlan, found: list[Path], job_dir: Path, say: Say) -> Rounds:
    """Each round runs everything once, in the same order; with --repeat N every figure is the best
    of its N runs, so a burst of load from elsewhere on a shared machine spoils one round, not the
    comparison."""
    rounds = Rounds()
    with private_services(plan.work_dir / "pipeline") as services:
        warm = warmup_dir(services, found, WARMUP_IMAGES_PER_PROCESS * plan.primary_workers)
        for round_no in range(1, plan.repeat + 1):
            tag = f"round {round_no}/{plan.repeat}: " if plan.repeat > 1 else ""
            _bare_round(plan, found, tag, rounds, say)
            for case in plan.round_cases():
                say(
                    f"{tag}pipeline {case.label}, decode {case.decode}, on {case.runtime}: "
                    f"{case.workers} worker processes, batch {case.batch_size}"
                )
                run = run_pipeline(services, job_dir, warm, case).as_dict()
                rounds.jobs.append(run)
                _keep_best(rounds.best, case, run)
        rounds.database = str(services.db_url)
    return rounds


def _bare_round(plan: BenchPlan, found: list[Path], tag: str, rounds: Rounds, say: Say) -> None:
    """The bare loops, one process per core at the workers' onnxruntime batch, and Ray Data if asked.

    The bare loops: inference alone, what a user would write (Pillow + onnxruntime, the reference
    preprocessing), and each decoder of the plan with the same model.
    """
    for mode in ("model", "pillow", *plan.decodes):
        say(f"{tag}bare loop ({mode}): {len(found)} images, {plan.cpus} processes, batch {INFER_BATCH}")
        loop = bare_loop(plan.model_path, found, mode, plan.cpus, INFER_BATCH, plan.cpus)
        _keep_best(rounds.bare, mode, loop.as_dict())
    if plan.ray:
        from imgbatch.bench.ray_data import ray_data_run

        say(
            f"{tag}Ray Data: {plan.primary_workers} actors, batch {plan.primary_batch}, {plan.primary_decode}"
        )
        ray_run = ray_data_run(
            plan.model_path, found, plan.primary_workers, plan.primary_batch, plan.cpus, plan.primary_decode
        )
        _keep_best(rounds.bare, "ray", ray_run)


def _keep_best(table: dict[Any, Run], key: Any, result: Run) -> None:
    """Keep the faster of two results under ``key``; every rate seen goes to ``all_images_per_s``."""
    seen = table[key]["all_images_per_s"] if key in table else []
    if key not in table or result["images_per_s"] > table[key]["images_per_s"]:
        table[key] = result
    table[key]["all_images_per_s"] = [*seen, result["images_per_s"]]


def _result(
    plan: BenchPlan, found: list[Path], rounds: Rounds, parity: dict[str, Any], started: float
) -> dict[str, Any]:
    """The JSON of a bench; its keys and their order are what `--json` readers and `render` know."""
    runs = [rounds.best[case] for case in plan.int8_cases()]
    fp32_case = plan.fp32_case()
    fp32_run = rounds.best.get(fp32_case) if fp32_case else None
    figures = ratio_figures(plan, rounds.bare, runs, fp32_run)
    return {
        "machine": {
            "cpus": plan.cpus,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino_version(),
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "model": {
            "path": str(plan.model_path),
            "arch": plan.model_info.arch,
            "sha256": plan.model_info.graph_sha256,
        },
        "fp32_model": str(plan.fp32_path) if plan.fp32_path else None,
        "image_set": {"directory": str(plan.directory), **describe(found)},
        "config": {
            "worker_counts": list(plan.worker_counts),
            "batch_sizes": list(plan.batch_sizes),
            "runtimes": list(plan.runtimes),
            "primary_workers": plan.primary_workers,
            "primary_batch": plan.primary_batch,
            "max_workers": plan.primary_workers,
            "repeat": plan.repeat,
            "infer_batch": INFER_BATCH,
            "decodes": list(plan.decodes),
            "primary_decode": plan.primary_decode,
            "database": rounds.database,
        },
        "bare": rounds.bare,
        "pipeline": runs,
        "fp32": fp32_run,
        "ratios": figures,
        "decode_ratios": decode_ratios(plan, rounds.bare, runs),
        "runtime_ratios": runtime_figures(plan, rounds.bare, runs),
        "targets": target_checks(figures),
        "one_result_per_image": all(
            r["results"] == r["images"] and r["pending"] == 0 and r["images"] > 0 for r in rounds.jobs
        ),
        "jobs": len(rounds.jobs),
        "decoder_parity": parity,
        "seconds": time.monotonic() - started,
    }
