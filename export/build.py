"""End to end: checkpoint -> FP32 ONNX (parity-checked) -> static INT8 ONNX with the imgbatch contract.

The output is written atomically: everything is built in a temporary file beside ``output`` and
moved into place with ``os.replace`` only after it has been re-opened through
``imgbatch.modelfile.open_session``. A failed build leaves ``output`` as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.efficientnet_lite import ARCH, checkpoint_path, file_sha256, load_pretrained
from export.metadata import write_metadata
from export.onnx_export import ParityReport, check_parity, export_fp32, load_batch, ort_session
from export.quantize import QuantConfig, get_preset, quantize_int8
from imgbatch.errors import UserError
from imgbatch.modelfile import open_session
from imgbatch.preprocess import PreprocessSpec
from imgbatch.samples import EXPECTED_CLASSES, make_variants, write_photos


@dataclass(frozen=True)
class BuildReport:
    path: Path
    quant_json: Path
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    parity: ParityReport
    graph_sha256: str

    def summary(self) -> str:
        return (
            f"wrote {self.path} ({self.int8_bytes / 1e6:.2f} MB INT8, FP32 {self.fp32_bytes / 1e6:.2f} MB) "
            f"in {self.seconds:.1f} s; FP32 ONNX vs torch max |logit diff| {self.parity.max_abs_diff:.1e} "
            f"on {self.parity.images} photos"
        )


def quant_json_path(model_path: Path) -> Path:
    """``<dir>/<stem>.quant.json`` beside the model (``x.int8.onnx`` -> ``x.int8.quant.json``)."""
    return model_path.with_suffix(".quant.json")


def _prepare_output_dir(output: Path) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        # mkdir reports a file in the way as "File exists", which does not tell the user which one.
        ancestors = (output.parent, *output.parent.parents)
        blocker = next((p for p in ancestors if p.exists() and not p.is_dir()), None)
        where = f"{blocker} is a file, not a directory" if blocker else (exc.strerror or str(exc))
        raise UserError(f"cannot create output directory {output.parent}: {where}") from exc
    except OSError as exc:
        raise UserError(f"cannot create output directory {output.parent}: {exc.strerror or exc}") from exc
    if output.is_dir():
        raise UserError(f"output {output} is a directory; give a file path such as {output / 'model.onnx'}")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"output directory {output.parent} is not writable")


def _check_expected_classes(model_path: Path, photo_dir: Path, spec: PreprocessSpec) -> None:
    # A quantized model that no longer recognises the two unambiguous photos is broken, whatever
    # its metrics say; refuse to install it.
    photos = write_photos(photo_dir, sorted(EXPECTED_CLASSES))
    logits = ort_session(model_path).run(None, {"input": load_batch(photos, spec)})[0]
    for photo, row in zip(photos, logits, strict=True):
        top1 = int(np.argmax(row))
        if top1 not in EXPECTED_CLASSES[photo.stem]:
            raise UserError(
                f"quantized model classifies the {photo.stem} photo as class {top1}; expected one of "
                f"{sorted(EXPECTED_CLASSES[photo.stem])} (try more calibration photos)"
            )


def build_model(
    output: Path,
    calib_count: int = 100,
    seed: int = 0,
    config: QuantConfig | None = None,
    fp32_output: Path | None = None,
) -> BuildReport:
    """Build the INT8 model at ``output`` (and ``<stem>.quant.json``); returns what was measured.

    ``calib_count`` and ``seed`` override the preset's calibration set size and variant seed.
    ``fp32_output``, if given, also keeps the parity-checked FP32 ONNX (without metadata) there.
    """
    started = time.perf_counter()
    output = Path(output).expanduser().absolute()
    # Validating the recipe first means a bad count fails before any file or directory is touched.
    config = (config or get_preset()).replace(calib_count=calib_count, calib_seed=seed)
    _prepare_output_dir(output)
    spec = PreprocessSpec()

    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.build-", dir=output.parent))
    staged_model = work / "model.onnx"
    staged_json = work / "quant.json"
    try:
        source = checkpoint_path()
        model = load_pretrained(source)

        fp32 = export_fp32(model, work / "fp32.onnx", image_size=spec.crop)
        parity = check_parity(model, fp32, write_photos(work / "photos"), spec)
        del model

        calib = make_variants(work / "calib", config.calib_count, seed=config.calib_seed)
        int8 = quantize_int8(fp32, work / "int8.onnx", calib, config, spec)

        proto = onnx.load_model(str(int8))
        write_metadata(
            proto,
            arch=ARCH,
            quantization_json=config.to_json(),
            source_sha256=file_sha256(source),
            spec=spec,
        )
        onnx.save_model(proto, str(staged_model))
        staged_json.write_text(config.to_json() + "\n")
        # Read back exactly as a worker will; a file workers cannot open must never be installed.
        _, info = open_session(staged_model)
        _check_expected_classes(staged_model, work / "check", spec)

        if fp32_output is not None:
            shutil.copyfile(fp32, Path(fp32_output))
        # The work directory sits beside the target, so os.replace is an atomic rename on one
        # filesystem: readers see the old file or the complete new one, never a partial write.
        os.replace(staged_model, output)
        # The sidecar is redundant with the model's own metadata, so it is moved after the model:
        # a crash between the two leaves a complete model with, at worst, a stale sidecar.
        sidecar = quant_json_path(output)
        os.replace(staged_json, sidecar)

        return BuildReport(
            path=output,
            quant_json=sidecar,
            fp32_bytes=fp32.stat().st_size,
            int8_bytes=output.stat().st_size,
            seconds=time.perf_counter() - started,
            parity=parity,
            graph_sha256=info.graph_sha256,
        )
    except OSError as exc:
        raise UserError(f"cannot write model to {output}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


def build_default_model(output: Path, calib_count: int = 100, seed: int = 0) -> Path:
    """Build the default EfficientNet-Lite0 static INT8 model at ``output``; returns its path."""
    return build_model(output, calib_count=calib_count, seed=seed).path
