"""Preparation: a raw dataset (an official CIFAR archive, an image folder or a tar of one, scikit-learn's digits)
turned into the compact prepared folder that training reads (its format: resnet_repro.prepared).

Every write goes to a temporary name first and is renamed into place, so an interrupted or failed step never
leaves something a later step could take for a result.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .archives import ARCHIVES
from .errors import DataError
from .extract import safe_extract
from .prepared import CIFAR_AUGMENT, content_sha256
from .runfiles import (
    NO_SPACE,
    NOT_ALLOWED,
    atomic_directory,
    atomic_write_bytes,
    atomic_writer,
    open_input,
    output_error,
)

# Digits are 8x8 and not mirror-symmetric.
AUGMENT_DEFAULTS = {"cifar": CIFAR_AUGMENT, "digits": {"pad": 1, "flip": False}}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


# ------------------------------------------------------------------------------------------------------ CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """The official CIFAR pickles hold dicts of bytes, lists and numpy arrays; refuse anything else, so a
    tampered archive cannot run code when read."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes; no code runs
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: not part of the CIFAR format")


def _unpickle(path: Path, *keys: bytes) -> dict:
    """One CIFAR pickle: a dict that must hold `keys`."""
    if not path.is_file():
        raise DataError(f"missing file in CIFAR archive: {path.name} (expected at {path})")
    try:
        with open_input(path, "CIFAR file") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"corrupt CIFAR file {path}: {error}") from None
    missing = [key.decode() for key in keys if not isinstance(batch, dict) or key not in batch]
    if missing:
        raise DataError(f"corrupt CIFAR file {path}: no {', '.join(missing)} entry (not the official python version)")
    return batch


def _cifar_arrays(batch: dict, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR batch has shape {data.shape}, expected (N, 3072)")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(root: Path, dataset: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read an extracted official python-version archive (cifar-10-batches-py/ or cifar-100-python/)."""
    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        train = [
            _cifar_arrays(_unpickle(folder / f"data_batch_{i}", b"data", b"labels"), b"labels") for i in range(1, 6)
        ]
        test = _cifar_arrays(_unpickle(folder / "test_batch", b"data", b"labels"), b"labels")
        classes = [c.decode() for c in _unpickle(folder / "batches.meta", b"label_names")[b"label_names"]]
        images = np.concatenate([t[0] for t in train])
        labels = np.concatenate([t[1] for t in train])
        return {"train": (images, labels), "test": test}, classes
    folder = root / "cifar-100-python"
    splits = {
        s: _cifar_arrays(_unpickle(folder / s, b"data", b"fine_labels"), b"fine_labels") for s in ("train", "test")
    }
    classes = [c.decode() for c in _unpickle(folder / "meta", b"fine_label_names")[b"fine_label_names"]]
    return splits, classes


# ----------------------------------------------------------------------------------------------- image folder
def _find_split_root(root: Path) -> Path:
    """The folder holding train/ and test/ (or val/): `root` itself or its single sub-folder."""
    if (root / "train").is_dir():
        return root
    children = [c for c in root.iterdir() if c.is_dir()]
    if len(children) == 1 and (children[0] / "train").is_dir():
        return children[0]
    raise DataError(f"{root}: expected an image folder with train/<class>/ and test/<class>/ (or val/<class>/)")


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot decode image {path}: {error}") from None


def read_image_folder(root: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read train/<class>/* and test/<class>/* (all images of one size) into uint8 arrays."""
    root = _find_split_root(root)
    classes = sorted(c.name for c in (root / "train").iterdir() if c.is_dir())
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders")
    test_name = "test" if (root / "test").is_dir() else "val"
    if not (root / test_name).is_dir():
        raise DataError(f"{root}: no test/ or val/ folder")
    splits = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for split, folder in (("train", "train"), ("test", test_name)):
            files, labels = [], []
            for index, name in enumerate(classes):
                class_dir = root / folder / name
                found = (
                    sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                    if class_dir.is_dir()
                    else []
                )
                files += found
                labels += [index] * len(found)
            if not files:
                raise DataError(f"{root / folder}: no images")
            decoded = list(pool.map(_decode, files, chunksize=256))
            shapes = {d.shape for d in decoded}
            if len(shapes) != 1:
                raise DataError(f"{root / folder}: images differ in size ({sorted(shapes)[:3]}...); resize them first")
            images = np.stack(decoded).transpose(0, 3, 1, 2).copy()
            splits[split] = (images, np.asarray(labels, dtype=np.int64))
    return splits, classes


# ----------------------------------------------------------------------------------------------------- digits
def read_digits(test_fraction: float = 0.2) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images), split with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255, [N,1,8,8]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test_count = round(len(labels) * test_fraction)
    test, train = order[:test_count], order[test_count:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}, [str(d) for d in range(10)]


# ---------------------------------------------------------------------------------------------- preparation
def write_prepared(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str], out: Path, name: str, augment: dict
) -> Path:
    """Write the compact prepared format (see module docstring)."""
    train_images = splits["train"][0]
    for split, (images, labels) in splits.items():
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"{name} {split}: expected uint8 images [N,C,H,W] and N labels")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise DataError(f"{name} {split}: labels outside 0..{len(classes) - 1}")
    pixels = train_images.astype(np.float64) / 255.0
    meta = {
        "name": name,
        "classes": classes,
        "num_classes": len(classes),
        "channels": int(train_images.shape[1]),
        "image_size": int(train_images.shape[2]),
        "counts": {split: len(labels) for split, (_, labels) in splits.items()},
        "mean": pixels.mean(axis=(0, 2, 3)).round(6).tolist(),
        "std": pixels.std(axis=(0, 2, 3)).round(6).tolist(),
        "augment": augment,
        "sha256": content_sha256(splits),
        "format": 1,
    }
    with atomic_directory(out) as staging:
        for split, (images, labels) in splits.items():
            with atomic_writer(staging / f"{split}.npz") as handle:
                np.savez(handle, images=images, labels=labels)
        atomic_write_bytes(staging / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out


def prepare(dataset: str, out: Path, raw: Path | None = None) -> Path:
    """Prepare `dataset` ('cifar10', 'cifar100', 'digits' or 'imagefolder') from its raw form into `out`."""
    if dataset == "digits":
        splits, classes = read_digits()
        return write_prepared(splits, classes, out, "digits", AUGMENT_DEFAULTS["digits"])
    if raw is None:
        raise DataError(f"dataset {dataset!r} needs --raw (the fetched archive or folder)")
    raw = Path(raw)
    if not raw.exists():
        raise DataError(f"raw data not found: {raw}")
    if dataset not in (*ARCHIVES, "imagefolder"):
        raise DataError(f"unknown dataset {dataset!r}; known: cifar10, cifar100, digits, imagefolder")
    try:  # extraction scratch space beside the output (same file system), removed afterwards
        scratch_folder = tempfile.TemporaryDirectory(dir=Path(out).parent if Path(out).parent.exists() else None)
    except OSError as error:
        if error.errno in NO_SPACE | NOT_ALLOWED:
            raise output_error(Path(out), error) from None
        raise
    with scratch_folder as scratch:
        root = safe_extract(raw, Path(scratch) / "x") if raw.is_file() else raw
        splits, classes = read_cifar(root, dataset) if dataset in ARCHIVES else read_image_folder(root)
        name = dataset if dataset in ARCHIVES else Path(out).name
        return write_prepared(
            splits,
            classes,
            out,
            name,
            AUGMENT_DEFAULTS["cifar"] if dataset != "imagefolder" else _folder_augment(splits),
        )


def _folder_augment(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    size = splits["train"][0].shape[2]
    return {"pad": max(1, size // 8), "flip": True}
