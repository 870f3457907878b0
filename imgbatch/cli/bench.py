"""`imgbatch bench DIR`: options in, a plan to imgbatch.bench, its figures out as text or JSON.

The per-stage figures come from the stored per-image timings, so `imgbatch stats JOB` shows the same
breakdown for any bench job (its database is kept with --work-dir).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from imgbatch.cli.console import err_console, settings
from imgbatch.cli.params import JsonFlag
from imgbatch.core.errors import UserError

DEFAULT_IMAGES = 5000

BenchDirArg = Annotated[
    Path,
    typer.Argument(
        metavar="DIR", help="Images to benchmark on; if missing or empty, a benchmark set is written there."
    ),
]
Int8ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", metavar="PATH", help="INT8 model (default: IMGBATCH_MODEL or the built one)."
    ),
]
ImagesOpt = Annotated[
    int,
    typer.Option(
        "--images", "-n", metavar="N", min=1, help="Images per job (a set this large is made if needed)."
    ),
]
WorkersOpt = Annotated[
    str | None,
    typer.Option("--workers", metavar="LIST", help="Worker process counts, e.g. 1,2 (default: 1..cores)."),
]
BatchSizesOpt = Annotated[
    str, typer.Option("--batch-sizes", metavar="LIST", help="Batch sizes, e.g. 1,8,32.")
]
Fp32ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--fp32-model",
        metavar="PATH",
        help="FP32 model with the same contract (default: <model>.fp32.onnx beside the INT8 model, "
        "exported once if missing, which needs the export extra).",
    ),
]
NoFp32Flag = Annotated[bool, typer.Option("--no-fp32", metavar="", help="Skip the INT8-vs-FP32 comparison.")]
WorkDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--work-dir",
        metavar="DIR",
        help="Keep the bench database and logs here (default: a temp dir, removed).",
    ),
]
RepeatOpt = Annotated[
    int,
    typer.Option("--repeat", metavar="N", min=1, help="Rounds; each figure is the best of its rounds."),
]
DecodesOpt = Annotated[
    str | None,
    typer.Option(
        "--decodes",
        metavar="LIST",
        help="The workers' decoders to run, e.g. exact,fast; the first gives the ratio lines "
        "(default: IMGBATCH_DECODE).",
    ),
]
RuntimesOpt = Annotated[
    str | None,
    typer.Option(
        "--runtimes",
        metavar="LIST",
        help="Workers' runtimes, e.g. onnxruntime,openvino; the first is the ratio lines' (default: "
        "IMGBATCH_RUNTIME, auto: the one workers would pick here).",
    ),
]
RayFlag = Annotated[
    bool,
    typer.Option(
        "--ray",
        metavar="",
        help="Also run the job on Ray Data: same images, decode and model (imgbatch[ray]).",
    ),
]


def bench_command(
    directory: BenchDirArg,
    model: Int8ModelOpt = None,
    images: ImagesOpt = DEFAULT_IMAGES,
    workers: WorkersOpt = None,
    batch_sizes: BatchSizesOpt = "1,8,32",
    fp32_model: Fp32ModelOpt = None,
    no_fp32: NoFp32Flag = False,
    work_dir: WorkDirOpt = None,
    repeat: RepeatOpt = 1,
    ray: RayFlag = False,
    decodes: DecodesOpt = None,
    runtimes: RuntimesOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Measure the pipeline against a bare decode+inference loop.

    Runs the bare loop and the full pipeline (submit -> Redis -> Celery workers -> database) on the
    same images in one run, then prints the ratios and a table of images/s, stage latencies and peak
    RSS for each worker count and batch size.

    Example: imgbatch bench /tmp/bench --images 2000 --workers 1,2 --decodes exact,fast
    """
    from imgbatch.bench.models import check_fp32_twin, fp32_sibling
    from imgbatch.bench.plan import BenchPlan
    from imgbatch.bench.report import render
    from imgbatch.bench.run import run_bench, work_directory
    from imgbatch.core.cpus import usable_cpus
    from imgbatch.core.modelfile import read_model_info

    model_path = (model or settings().model_path).resolve()
    info = read_model_info(model_path)
    cpus = usable_cpus()
    worker_counts = _ints(workers, "--workers") if workers else list(range(1, cpus + 1))
    batches = _ints(batch_sizes, "--batch-sizes")
    decoders = _decoders(decodes) if decodes else (settings().decode,)
    fp32_path = None if no_fp32 else (fp32_model or fp32_sibling(model_path)).resolve()
    if fp32_path is not None and fp32_path.is_file():
        check_fp32_twin(fp32_path, info, model_path)  # before any work: a wrong file surfaces in seconds
    threads = max(1, cpus // max(worker_counts))
    chosen = _runtimes(runtimes or settings().runtime, model_path, threads)
    if ray:  # fail before any work, not after the bare loops
        from imgbatch.bench.ray_data import require_ray

        require_ray()

    with work_directory(work_dir) as work:
        plan = BenchPlan(
            directory=directory,
            model_path=model_path,
            model_info=info,
            images=images,
            cpus=cpus,
            worker_counts=tuple(worker_counts),
            batch_sizes=tuple(batches),
            fp32_path=fp32_path,
            work_dir=work,
            repeat=repeat,
            ray=ray,
            decodes=decoders,
            runtimes=chosen,
        )
        result = run_bench(plan, say=err_console.print)
        result["work_dir"] = str(work) if work_dir is not None else None
    print(json.dumps(result, indent=2, default=_json_default) if as_json else render(result))


def _runtimes(text: str, model_path: Path, threads: int) -> tuple[str, ...]:
    """The runtimes of --runtimes, in order and without repeats; ``auto`` as workers would resolve it
    here (measured once and cached)."""
    from imgbatch.core.runtime_choice import planned_runtime

    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise UserError(f"--runtimes: expected a comma-separated list of runtimes, got {text!r}")
    cache_dir = settings().cache_dir
    chosen = [planned_runtime(model_path, threads, name, cache_dir)[0] for name in names]
    return tuple(dict.fromkeys(chosen))


def _ints(text: str, name: str) -> list[int]:
    """Comma-separated positive integers, sorted and without repeats."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise UserError(f"{name}: expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise UserError(f"{name}: expected positive integers, got {text!r}")
    return values


def _decoders(text: str) -> tuple[str, ...]:
    """Comma-separated decoder names, in the order given, without repeats."""
    from imgbatch.core.preprocess import DECODERS

    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [n for n in names if n not in DECODERS]
    if not names or unknown:
        raise UserError(f"--decodes: expected some of {', '.join(DECODERS)}, got {text!r}")
    return names


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
