"""Where the PyTorch model comes from: an architecture + state_dict, a TorchScript file, or a .pt2 program.

Every loader returns a ``Source``: the eval-mode module to export and compare against, the
preprocessing and labels that go into the model file, and the sha256 of the file it came from.
Anything wrong with the input is a ``UserError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgbatch.core.errors import UserError
from imgbatch.core.preprocess import PreprocessSpec
from imgbatch.export.quantize import DEFAULT_PRESET


@dataclass(frozen=True)
class Arch:
    name: str
    factory: Callable[[], torch.nn.Module]
    spec: PreprocessSpec
    # The bundled pretrained checkpoint, if this architecture has one (no download ever).
    default_weights: Callable[[], Path] | None = None
    # The quantization preset `imgbatch export` uses for this architecture's checkpoints when none is
    # named (export.quantize.PRESETS says what each measured).
    preset: str = DEFAULT_PRESET


def _efficientnet() -> torch.nn.Module:
    from imgbatch.export.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0()


def _resnet50() -> torch.nn.Module:
    from imgbatch.export.resnet import ResNet50

    return ResNet50()


def _efficientnet_weights() -> Path:
    from imgbatch.export.efficientnet_lite import checkpoint_path

    return checkpoint_path()


def _archs() -> dict[str, Arch]:
    from imgbatch.export.resnet import PREPROCESS as RESNET_SPEC

    return {
        "efficientnet_lite0": Arch(
            "efficientnet_lite0",
            _efficientnet,
            PreprocessSpec(),
            _efficientnet_weights,
            preset="static-int8-gptq-fp32-first-block",
        ),
        "resnet50": Arch("resnet50", _resnet50, RESNET_SPEC),
    }


ARCH_NAMES = ("efficientnet_lite0", "resnet50")
DEFAULT_ARCH = "efficientnet_lite0"


def default_preset(arch_name: str, state_dict: bool = True) -> str:
    """The preset for a model with no --preset: its architecture's for a state_dict (whose graph is
    that architecture's), the general default for TorchScript / .pt2 files (any graph)."""
    return get_arch(arch_name).preset if state_dict else DEFAULT_PRESET


def get_arch(name: str) -> Arch:
    archs = _archs()
    key = name.replace("-", "_").lower()
    if key not in archs:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(archs)}")
    return archs[key]


@dataclass(frozen=True)
class Source:
    model: torch.nn.Module
    arch: str
    spec: PreprocessSpec
    sha256: str
    path: Path
    kind: str  # "state_dict", "torchscript" or "torch.export"

    def describe(self) -> str:
        return f"{self.arch} ({self.kind}: {self.path.name}, sha256 {self.sha256[:12]})"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _readable(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts often save {"state_dict": ...} or {"model": ...}, or a DataParallel "module." prefix.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} is not a state_dict (a mapping of parameter names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Raise a UserError naming the first mismatching keys (missing, unexpected, wrong shape)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape (file vs model)", shapes),
    ):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise UserError(f"checkpoint {path} does not fit --arch {arch}: {'; '.join(problems)}")


def load_state_dict_source(arch_name: str, weights: Path | None) -> Source:
    arch = get_arch(arch_name)
    if weights is None:
        if arch.default_weights is None:
            raise UserError(f"--arch {arch.name} has no bundled weights: give --weights FILE (a state_dict)")
        weights = arch.default_weights()
    path = _readable(weights, "checkpoint")
    try:
        # weights_only: a checkpoint is a pickle; never let it execute code.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"cannot read checkpoint {path}: not a plain state_dict of tensors (torch.load with "
            "weights_only=True refused it); save model.state_dict() instead"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/zipfile errors for corrupt files
        raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
    state = _unwrap_state_dict(obj, path)
    model = arch.factory()
    check_state_dict(model, state, path, arch.name)
    model.load_state_dict(state, strict=True)
    return Source(model.eval(), arch.name, arch.spec, file_sha256(path), path, "state_dict")


def load_torchscript_source(path: Path, arch_name: str) -> Source:
    arch = get_arch(arch_name)
    path = _readable(path, "TorchScript file")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UserError(f"cannot load TorchScript file {path}: {_first_line(exc)}") from exc
    return Source(model.eval(), arch.name, arch.spec, file_sha256(path), path, "torchscript")


def load_exported_source(path: Path, arch_name: str) -> Source:
    arch = get_arch(arch_name)
    path = _readable(path, "torch.export program")
    if not zipfile.is_zipfile(path):
        raise UserError(f"cannot load torch.export program {path}: not a .pt2 archive")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UserError(f"cannot load torch.export program {path}: {_first_line(exc)}") from exc
    return Source(_ExportedModule(program), arch.name, arch.spec, file_sha256(path), path, "torch.export")


class _ExportedModule(torch.nn.Module):
    """Holds an ExportedProgram so it runs like a module and is exported as the program itself."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.program = program
        self.runner = program.module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.runner(x)
        return out[0] if isinstance(out, tuple | list) else out

    def eval(self) -> _ExportedModule:  # unlifted graph modules refuse train()/eval() switching
        return self

    def train(self, mode: bool = True) -> _ExportedModule:
        return self


def load_source(
    arch: str = DEFAULT_ARCH,
    weights: Path | None = None,
    torchscript: Path | None = None,
    exported: Path | None = None,
) -> Source:
    given = [
        name
        for name, value in (("--weights", weights), ("--torchscript", torchscript), ("--pt2", exported))
        if value
    ]
    if len(given) > 1:
        raise UserError(f"give only one model source, not {' and '.join(given)}")
    get_arch(arch)  # an unknown name fails before any file is read
    if torchscript is not None:
        return load_torchscript_source(torchscript, arch)
    if exported is not None:
        return load_exported_source(exported, arch)
    return load_state_dict_source(arch, weights)
