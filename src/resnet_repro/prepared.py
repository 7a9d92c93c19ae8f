"""The prepared dataset format, and reading it back: what every training, evaluation and analysis job loads.

    <prepared>/train.npz   images uint8 [N, C, H, W], labels int64 [N]
    <prepared>/test.npz
    <prepared>/meta.json   classes, shape, counts, per-channel mean/std, augmentation defaults, content sha256

`resnet_repro.prepare` writes it; nothing here downloads, extracts or decodes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

# Paper section 4.2: 4-pixel padding, random crop, horizontal flip (the default of a folder without its own).
CIFAR_AUGMENT = {"pad": 4, "flip": True}


def content_sha256(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The identity of a prepared dataset's content: its splits' images and labels, in split order."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        images, labels = splits[split]
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


@dataclass
class PreparedData:
    """A prepared dataset in memory: uint8 images and int64 labels per split, plus its metadata."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    meta: dict

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def load_prepared(folder: Path, split: str = "test", verify: bool = True) -> PreparedData:
    """Load a prepared folder. `split='test'` trains on the training set and tests on the test set (the paper's
    reported protocol); `split='val'` holds out the last 5k of a fixed permutation of the training set as
    validation (the paper's 45k/5k split for choosing hyper-parameters; proportionally 10% for other sizes)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{folder} is not a prepared dataset (no meta.json); run `resnet-repro prepare` first")
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {}
        for name in ("train", "test"):
            with np.load(folder / f"{name}.npz", allow_pickle=False) as data:
                arrays[name] = (data["images"], data["labels"])
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{folder}: cannot read prepared data ({error}); prepare it again") from None
    if verify and content_sha256(arrays) != meta.get("sha256"):
        raise DataError(f"{folder}: content checksum does not match meta.json; the files are corrupt, prepare again")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    if split == "val":
        order = np.random.default_rng(0).permutation(len(train_y))
        held = 5000 if len(train_y) == 50000 else max(1, len(train_y) // 10)
        keep, val = np.sort(order[:-held]), np.sort(order[-held:])
        train_x, train_y, test_x, test_y = train_x[keep], train_y[keep], train_x[val], train_y[val]
    elif split != "test":
        raise DataError(f"unknown split {split!r}: use 'test' or 'val'")
    return PreparedData(train_x, train_y, test_x, test_y, meta)
