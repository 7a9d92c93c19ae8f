"""The papers' names and kinds of catalogue models: labels, depths, plain or residual, the 6n+2 CIFAR nets."""

from __future__ import annotations

from ..catalog import CATALOG


def model_label(name: str) -> str:
    """The papers' spelling of a catalogue name (its entry's label): plain20 -> plain-20, cifar_plain18 ->
    PlainCNN-18 (the review's name), cifar_vgg16_bn -> VGG-16-BN, fc20 -> FC-20. Other names stay as they are."""
    entry = CATALOG.get(name)
    return entry.label if entry is not None else name


def model_depth(name: str) -> int | None:
    entry = CATALOG.get(name)
    return entry.depth if entry is not None else None


def is_cifar_6n2(name: str) -> bool:
    """The paper's CIFAR nets (6n+2 layers, 16/32/64 channels): those Fig. 6 and Fig. 7 are about."""
    entry = CATALOG.get(name)
    return entry is not None and entry.kind == "resnet" and tuple(entry.args.get("widths", ())) == (16, 32, 64)


def is_residual(name: str) -> bool:
    entry = CATALOG.get(name)
    return entry is not None and entry.kind == "resnet" and entry.args.get("shortcut") != "none"


def is_plain(name: str) -> bool:
    entry = CATALOG.get(name)
    return entry is not None and entry.kind == "resnet" and entry.args.get("shortcut") == "none"
