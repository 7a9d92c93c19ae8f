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

# Paper Table 1: ImageNet forms (7x7 stem + max-pool, option B); the review's CIFAR forms (3x3 stem, no pool).
for depth, block, layout in (
    (18, "basic", (2, 2, 2, 2)),
    (34, "basic", (3, 4, 6, 3)),
    (50, "bottleneck", (3, 4, 6, 3)),
):
    # The review calls its CIFAR-form plain nets PlainCNN-n; the paper's ImageNet ones are plain-n.
    for prefix, stem, form, plain in (
        ("", "imagenet", "ImageNet form", "plain"),
        ("cifar_", "cifar", "CIFAR form (3x3 stem, no max-pool)", "PlainCNN"),
    ):
        for kind, shortcut in (("resnet", "B"), ("plain", "none")):
            if kind == "plain" and depth == 50:
                continue
            title = f"ResNet-{depth}, {form}, option-B shortcuts" if kind == "resnet" else f"Plain-{depth}, {form}"
            args = {"block": block, "layout": layout, "widths": (64, 128, 256, 512), "stem": stem, "shortcut": shortcut}
            label = f"ResNet-{depth}" if kind == "resnet" else f"{plain}-{depth}"
            _add(ModelEntry(f"{prefix}{kind}{depth}", stem, "resnet", title, args, label=label, depth=depth))

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
