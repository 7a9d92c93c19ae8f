"""The model catalogue as plain data: every registered name, its family and its architecture parameters.

Kept free of torch so that the pipeline can validate model names in config.yaml in milliseconds;
`resnet_repro.models.build_model` turns an entry into a module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "cifar", "imagenet" or "fc": which input form it is built for
    kind: str  # "resnet", "vgg" or "fc": which class builds it
    description: str
    args: dict[str, Any] = field(default_factory=dict)
    # How the papers write it (plain20 -> plain-20, cifar_plain18 -> PlainCNN-18, the review's name), and its
    # layer count: what figures, tables and claims show. Given where the entry is registered, never parsed.
    label: str = field(kw_only=True)
    depth: int | None = field(kw_only=True)


CATALOG: dict[str, ModelEntry] = {}


def _add(entry: ModelEntry) -> None:
    if entry.name in CATALOG:
        raise ValueError(f"model {entry.name!r} registered twice")
    CATALOG[entry.name] = entry


# Paper section 4.2: 6n+2 layers on 32x32 inputs, 16/32/64 channels, option-A shortcuts (plain: none).
for depth in (8, 14, 20, 32, 44, 56, 110, 1202):
    n = (depth - 2) // 6
    for prefix, shortcut in (("resnet", "A"), ("plain", "none")):
        if prefix == "plain" and depth == 1202:
            continue
        what = "option-A shortcuts" if shortcut == "A" else "no shortcuts"
        args = {"block": "basic", "layout": (n, n, n), "widths": (16, 32, 64), "stem": "cifar", "shortcut": shortcut}
        label = f"ResNet-{depth}" if prefix == "resnet" else f"plain-{depth}"
        _add(
            ModelEntry(
                f"{prefix}{depth}",
                "cifar",
                "resnet",
                f"CIFAR {depth}-layer net, {what}",
                args,
                label=label,
                depth=depth,
            )
        )

# Paper Table 1: the block and the blocks per stage of each ImageNet depth (64/128/256/512 channels per stage).
IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# The paper's three shortcut options (Sec. 3.3 and Table 3), as the descriptions spell them.
SHORTCUT_WORDS = {
    "A": "option A (zero-padded identity where dimensions grow: no extra parameters)",
    "B": "option B (projections where dimensions grow)",
    "C": "option C (projections on every shortcut)",
    "none": "no shortcuts",
}
# Stride placement of the bottleneck nets: the paper's (and its released Caffe models'), not torchvision's.
PAPER_BOTTLENECK = "bottleneck blocks striding their first 1x1 as the paper (torchvision's v1.5 strides the 3x3)"


def _resnet_args(depth: int, stem: str, shortcut: str) -> dict[str, Any]:
    block, layout = IMAGENET_LAYOUTS[depth]
    return {"block": block, "layout": layout, "widths": (64, 128, 256, 512), "stem": stem, "shortcut": shortcut}


def _description(depth: int, form: str, shortcut: str, note: str) -> str:
    kind = "Plain" if shortcut == "none" else "ResNet"
    block = f", {PAPER_BOTTLENECK}" if IMAGENET_LAYOUTS[depth][0] == "bottleneck" else ""
    return f"{kind}-{depth}, {form}{block}, {SHORTCUT_WORDS[shortcut]}{note}"


def _imagenet(name: str, depth: int, shortcut: str, label: str, note: str) -> None:
    args = _resnet_args(depth, "imagenet", shortcut)
    description = _description(depth, "ImageNet form", shortcut, f" ({note})")
    _add(ModelEntry(name, "imagenet", "resnet", description, args, label=label, depth=depth))


# The ImageNet forms (7x7/2 stem + max-pool). Table 2 compares plain-18/34 with option-A ResNet-18/34, which have
# exactly their plain twins' parameters; Table 3 compares the options on ResNet-34, and option-B bottleneck nets.
for depth, tables, option_b in ((18, "paper Table 2", ""), (34, "paper Tables 2 and 3", "paper Table 3; ")):
    _imagenet(f"plain{depth}", depth, "none", f"plain-{depth}", tables)
    _imagenet(f"resnet{depth}", depth, "A", f"ResNet-{depth} A", tables)
    _imagenet(f"resnet{depth}_b", depth, "B", f"ResNet-{depth} B", f"{option_b}torchvision's resnet{depth}")
_imagenet("resnet34_c", 34, "C", "ResNet-34 C", "paper Table 3")
for depth in (50, 101, 152):
    _imagenet(f"resnet{depth}", depth, "B", f"ResNet-{depth}", "paper Table 3")

# The review's CIFAR forms of ResNet-18/34/50 (option B) and of plain-18/34, which it calls PlainCNN-n: 3x3 stride-1
# stem, no max-pool.
for depth in (18, 34, 50):
    for kind, shortcut in (("resnet", "B"), ("plain", "none")):
        if kind == "plain" and depth == 50:
            continue
        description = _description(depth, "CIFAR form (3x3 stem, no max-pool)", shortcut, "")
        label = f"ResNet-{depth}" if kind == "resnet" else f"PlainCNN-{depth}"
        args = _resnet_args(depth, "cifar", shortcut)
        _add(ModelEntry(f"cifar_{kind}{depth}", "cifar", "resnet", description, args, label=label, depth=depth))

for depth in (16, 19):
    for prefix, form in (("cifar_", "cifar"), ("", "imagenet")):
        _add(
            ModelEntry(
                f"{prefix}vgg{depth}_bn",
                form,
                "vgg",
                f"VGG-{depth} with batch norm, {form} form",
                {"depth": depth, "form": form},
                label=f"VGG-{depth}-BN",
                depth=depth,
            )
        )

# The review's fully connected baselines.
for depth in (20, 56):
    _add(
        ModelEntry(
            f"fc{depth}",
            "fc",
            "fc",
            f"{depth} fully connected ReLU layers (option width, default 256), no normalization",
            {"depth": depth, "width": 256},
            label=f"FC-{depth}",
            depth=depth,
        )
    )
