"""Every network of the paper and the review, built from one residual-network definition.

`build_model(name, num_classes=..., in_channels=...)` is the single entry point; `catalog.CATALOG` lists each
registered name with its architecture parameters (as torch-free data). The families:

* CIFAR ResNets / plain nets of the paper's section 4.2 (6n+2 layers, 16/32/64 channels, option-A shortcuts).
* ImageNet forms (paper Table 1: 7x7 stem, max-pool, four stages): plain-18/34; ResNet-18/34 with option-A
  shortcuts (Table 2), with option B (torchvision's resnet18/34) and ResNet-34 with option C (Table 3); the
  bottleneck ResNet-50/101/152 with option B (Table 3).
* CIFAR forms of ResNet-18/34/50 and plain-18/34 ("PlainCNN" in the review): 3x3 stride-1 stem, no max-pool.
* VGG-16/19 with batch norm, CIFAR and ImageNet forms.
* FC-20/FC-56: deep fully connected ReLU stacks without normalization.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .catalog import CATALOG
from .errors import UnknownModelError

# The paper's shortcut options (Sec. 3.3): A zero-pads where dimensions grow, B projects there, C projects on every
# block; "none" is a plain net.
Shortcut = Literal["A", "B", "C", "none"]


class ZeroPadShortcut(nn.Module):
    """Option A of the paper: identity, subsampled by striding, extra channels zero-padded. No parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            # pad (W_left, W_right, H_top, H_bottom, C_front, C_back): split the new channels around the old.
            front = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, front, self.extra_channels - front))
        return x


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """A projection: 1x1 convolution + BN (options B and C)."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


def make_shortcut(kind: Shortcut, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The shortcut of one block, or None for a plain block (no addition at all)."""
    if kind == "none":
        return None
    if kind == "C":
        return projection_shortcut(in_planes, out_planes, stride)
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return projection_shortcut(in_planes, out_planes, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the residual form adds the shortcut before the last ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), as in the paper's Fig. 5 right. A stage's first block subsamples with its
    first 1x1 convolution, as the paper and its released models do; torchvision's "v1.5" strides the 3x3 instead
    (same parameters, different features)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = make_shortcut(shortcut, in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


@dataclass(frozen=True)
class ResNetSpec:
    """Everything that distinguishes one residual (or plain) network from another."""

    block: type[BasicBlock] | type[Bottleneck]
    blocks_per_stage: tuple[int, ...]
    widths: tuple[int, ...]
    stem: Literal["cifar", "imagenet"]
    shortcut: Shortcut


class ResNet(nn.Module):
    """One definition for CIFAR and ImageNet forms, residual and plain.

    Shapes for a CIFAR-form 6n+2 net on 32x32 input: stem -> 16x32x32, stages -> 16x32x32, 32x16x16,
    64x8x8, global average pool -> 64, fully connected -> classes. The ImageNet stem (7x7/2 + 3x3/2 max-pool)
    takes 224x224 to 56x56 before the first stage.
    """

    def __init__(self, spec: ResNetSpec, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        first = spec.widths[0]
        if spec.stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, first, 3, padding=1, bias=False), nn.BatchNorm2d(first), nn.ReLU()
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, first, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(first),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages = []
        in_planes = first
        for index, (count, width) in enumerate(zip(spec.blocks_per_stage, spec.widths, strict=True)):
            blocks = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(spec.block(in_planes, width, stride, spec.shortcut))
                in_planes = width * spec.block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


VGG_LAYOUTS: dict[int, tuple[int | str, ...]] = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG with batch norm. The CIFAR form ends at 1x1 after five poolings of a 32x32 input and feeds the
    512 features to the classifier directly; the ImageNet form pools to 7x7 first, as torchvision's vgg*_bn."""

    def __init__(
        self, depth: int, form: Literal["cifar", "imagenet"], num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG_LAYOUTS[depth]:
            if item == "M":
                # ceil_mode keeps small inputs (8x8 digits) from shrinking to nothing.
                layers.append(nn.MaxPool2d(2, ceil_mode=form == "cifar"))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        pooled = 1 if form == "cifar" else 7
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled * pooled, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class FullyConnected(nn.Module):
    """`depth` linear layers with ReLU between them on the flattened image; no normalization.

    Linear layers keep PyTorch's default initialization: with it the signal shrinks layer by layer, which is
    the regime the review's FC-20/FC-56 comparison shows (FC-56 stays at chance).
    """

    def __init__(self, depth: int, width: int = 256, num_classes: int = 10, in_features: int = 3 * 32 * 32) -> None:
        super().__init__()
        sizes = [in_features] + [width] * (depth - 1) + [num_classes]
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(fan_in, fan_out))
            if index < depth - 1:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(torch.flatten(x, 1))


def init_weights(model: nn.Module) -> None:
    """The paper's initialization: He normal for convolutions, BN weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def build_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options: int
) -> nn.Module:
    """Build a catalogued model by name; `options` override its architecture arguments (e.g. `width` for FC)."""
    try:
        entry = CATALOG[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOG))}") from None
    unknown = set(options) - ({"width"} if entry.kind == "fc" else set())
    if unknown:
        raise UnknownModelError(f"model {name!r} does not take the options {sorted(unknown)}")
    args = {**entry.args, **options}
    if entry.kind == "resnet":
        spec = ResNetSpec(BLOCKS[args["block"]], args["layout"], args["widths"], args["stem"], args["shortcut"])
        return ResNet(spec, num_classes, in_channels)
    if entry.kind == "vgg":
        return VGG(args["depth"], args["form"], num_classes, in_channels)
    return FullyConnected(args["depth"], args["width"], num_classes, in_channels * image_size * image_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def response_layers(model: nn.Module) -> Sequence[nn.BatchNorm2d]:
    """The BN layer after every 3x3 convolution of the residual stages, in network order (paper Fig. 7:
    responses after BN, before the nonlinearity or the addition)."""
    layers = []
    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            layers += [module.bn1, module.bn2] if isinstance(module, BasicBlock) else [module.bn2]
    return layers
