"""Arguments and options several commands share, spelled one way: upper-case metavars, flags bare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

# Every command: -h as well as --help, and help text wrapped to the terminal, not by us.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

JobArg = Annotated[
    str, typer.Argument(metavar="JOB", help="Job id, unique id prefix (4+ characters), or `latest`.")
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", metavar="PATH", help="ONNX model (default: IMGBATCH_MODEL or the built one)."
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", "-b", metavar="N", min=1, max=1024, help="Image paths per task message."),
]
NewFlag = Annotated[
    bool,
    typer.Option(
        "--new", metavar="", help="Start a new job even if an unfinished one covers the same directories."
    ),
]
WaitFlag = Annotated[
    bool, typer.Option("--wait", metavar="", help="Wait with a progress bar until the job is done.")
]
JsonFlag = Annotated[bool, typer.Option("--json", metavar="", help="JSON, for machines.")]
DecodeOpt = Annotated[
    Literal["exact", "fast"] | None,
    typer.Option(
        "--decode",
        metavar="exact|fast",
        help="Decoder: exact (bit-identical to the reference preprocessing) or fast (approximate); "
        "default IMGBATCH_DECODE or exact.",
    ),
]
RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        metavar="NAME",
        help="auto, onnxruntime or openvino (default: IMGBATCH_RUNTIME, else auto: OpenVINO where it is "
        "measured faster for the model on this CPU).",
    ),
]
