"""The real JPEG copy of CIFAR-10 in ../shared/data (skipped when absent): prepared once, then one epoch of
ResNet-20. One module, so the parallel run (tests/conftest.py) prepares it once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from resnet_repro.prepared import load_prepared

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_real_cifar10_jpeg_image_folder(cifar10_jpeg_prepared: Path) -> None:
    data = load_prepared(cifar10_jpeg_prepared)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.meta["classes"][:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(data.test_labels).tolist() == [1000] * 10


def test_one_epoch_of_resnet20_on_real_cifar10_jpeg(cifar10_jpeg_prepared: Path, tmp_path: Path) -> None:
    """The issue's bar: one epoch (390 iterations of 128) on 2 CPU cores reaches >= 40% test accuracy."""
    out = tmp_path / "resnet20"
    run_cli(
        "train",
        "--model",
        "resnet20",
        "--data",
        str(cifar10_jpeg_prepared),
        "--out",
        str(out),
        "--set",
        "iterations=390",
        "--set",
        "milestones=[]",
        "--set",
        "eval_every=390",
        timeout=1800,
    )
    run_cli("evaluate", "--run", str(out), "--data", str(cifar10_jpeg_prepared))
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"ResNet-20, one epoch on JPEG CIFAR-10: test error {metrics['test_error']:.3f}")
    assert metrics["test_error"] <= 0.60
