"""`imgbatch export`: the command. Heavy imports (torch, onnx) happen inside it, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from imgbatch.errors import UserError
from imgbatch.settings import get_settings

console = Console()


def export_command(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write the INT8 model (default: IMGBATCH_MODEL or the data dir)."
        ),
    ] = None,
    calib_count: Annotated[int, typer.Option(min=1, help="Calibration photos.")] = 100,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing if the output exists.")
    ] = False,
) -> None:
    """Build the EfficientNet-Lite0 static INT8 ONNX model from the pretrained checkpoint."""
    settings = get_settings()
    target = output or settings.model_path
    if if_missing and target.is_file():
        console.print(f"model already built: {target}")
        return
    try:
        from export.build import build_default_model
    except ImportError as exc:
        raise UserError(
            f"export needs the export extra (torch, onnx): pip install 'imgbatch[export]' ({exc})"
        ) from exc
    build_default_model(target, calib_count=calib_count)
    console.print(f"model written: {target}")
