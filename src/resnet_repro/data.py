"""Dataset acquisition and preparation.

Raw sources (official CIFAR archives by URL, file:// or local path; image folders as a folder or a tar of one;
scikit-learn's bundled digits) are turned into one compact prepared folder:

    <prepared>/train.npz   images uint8 [N, C, H, W], labels int64 [N]
    <prepared>/test.npz
    <prepared>/meta.json   classes, shape, counts, per-channel mean/std, augmentation defaults, content sha256

Every write goes to a temporary name first and is renamed into place, so an interrupted or failed step never
leaves something a later step could take for a result.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from .errors import DataError
from .runfiles import (
    NO_SPACE,
    NOT_ALLOWED,
    atomic_directory,
    atomic_write_bytes,
    atomic_writer,
    open_input,
    output_error,
)


@dataclass(frozen=True)
class ArchiveSpec:
    """An official dataset archive: where it lives and how to check it."""

    url: str
    md5: str
    filename: str


ARCHIVES: dict[str, ArchiveSpec] = {
    "cifar10": ArchiveSpec(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-python.tar.gz",
    ),
    "cifar100": ArchiveSpec(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python.tar.gz",
    ),
}

# Paper section 4.2: 4-pixel padding, random crop, horizontal flip. Digits are 8x8 and not mirror-symmetric.
CIFAR_AUGMENT = {"pad": 4, "flip": True}
AUGMENT_DEFAULTS = {"cifar": CIFAR_AUGMENT, "digits": {"pad": 1, "flip": False}}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


# --------------------------------------------------------------------------------------------------- fetching
def file_digest(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_path(source: str) -> Path | None:
    """The local file a source names (a file:// URL or a plain path), None for an http(s):// URL; DataError for
    anything else. Only parses: `pipeline check` uses it too, before any job runs."""
    try:
        parsed = urllib.parse.urlsplit(source)  # not urlparse, which cuts a file name at ';'
    except ValueError as error:  # e.g. an unclosed [ in the host
        raise DataError(f"unsupported source {source!r}: {error}") from None
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc:
            raise DataError(f"unsupported source {source!r}: no host after {parsed.scheme}://")
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
        return Path(source)
    raise DataError(f"unsupported source {source!r}: use https://, http://, file:// or a local path")


def _open_source(source: str, timeout: float) -> tuple[io.BufferedIOBase, int | None]:
    """A readable stream for an http(s):// or file:// URL or a local path, and its size when known."""
    path = source_path(source)
    if path is None:
        response = urllib.request.urlopen(source, timeout=timeout)
        length = response.headers.get("Content-Length")
        return response, int(length) if length else None
    if not path.is_file():
        raise DataError(f"source file not found: {path}")
    return open_input(path, "source file"), path.stat().st_size


class _Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise (cluster logs)."""

    def __init__(self, label: str, total: int | None, stream=None) -> None:
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.next_report = 0.0

    def update(self, done: int, final: bool = False) -> None:
        fraction = done / self.total if self.total else None
        now = time.monotonic()
        if not final and now < self.next_report:
            return
        self.next_report = now + (0.2 if self.tty else 10.0)
        rate = done / max(now - self.start, 1e-9) / 1e6
        text = f"{self.label}: {done / 1e6:.1f} MB"
        if fraction is not None:
            text += f" / {self.total / 1e6:.1f} MB ({100 * fraction:.0f}%)"
        text += f", {rate:.1f} MB/s"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def fetch(
    source: str,
    destination: Path,
    md5: str | None,
    retries: int = 3,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Copy `source` to `destination`, verified by MD5, atomically.

    An existing destination with the right checksum is kept as is. Transient network errors are retried with
    backoff; a checksum mismatch is not (the data itself is wrong) and leaves no file behind.
    """
    destination = Path(destination)
    if destination.is_file() and (md5 is None or file_digest(destination) == md5):
        return destination
    attempt = 0
    while True:
        attempt += 1
        try:
            return _fetch_once(source, destination, md5, timeout, quiet)
        except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as error:
            transient = not isinstance(error, urllib.error.HTTPError) or error.code in TRANSIENT_HTTP
            if not transient or attempt > retries:
                raise DataError(f"could not download {source}: {error}") from None
            wait = 2.0 ** (attempt - 1)
            print(f"download of {source} failed ({error}); retry {attempt}/{retries} in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)


def _fetch_once(source: str, destination: Path, md5: str | None, timeout: float, quiet: bool) -> Path:
    stream, total = _open_source(source, timeout)
    digest = hashlib.md5()
    progress = None if quiet else _Progress(f"fetch {destination.name}", total)
    done = 0
    with stream, atomic_writer(destination, suffix=".part") as handle:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            handle.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress.update(done)
        if progress:
            progress.update(done, final=True)
        # A failure raised here leaves the partial file unrenamed, and atomic_writer removes it.
        if total is not None and done != total:
            raise DataError(f"{source}: truncated transfer, got {done} of {total} bytes; nothing was kept")
        actual = digest.hexdigest()
        if md5 is not None and actual != md5:
            raise DataError(
                f"{source}: checksum mismatch: expected md5 {md5}, got {actual} ({done} bytes); "
                "the file is corrupt or truncated and nothing was kept"
            )
    return destination


# ------------------------------------------------------------------------------------------------- extraction
def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or Path(name).is_absolute():
        raise DataError(f"unsafe archive: member {name!r} has an absolute path")
    if ".." in Path(name).parts:
        raise DataError(f"unsafe archive: member {name!r} leaves the target folder")
    if member.isdev():
        raise DataError(f"unsafe archive: member {name!r} is a device file")
    if member.issym() or member.islnk():
        base = root if member.islnk() else (root / name).parent
        target = (base / member.linkname).resolve()
        if Path(member.linkname).is_absolute() or not target.is_relative_to(root.resolve()):
            raise DataError(f"unsafe archive: link {name!r} -> {member.linkname!r} points outside the target folder")


@contextmanager
def reading_archive(archive: Path, out: Path) -> Iterator[tarfile.TarFile]:
    """A tar archive opened for reading into `out`: a missing, unreadable or corrupt archive (found on opening or
    later, while reading) is one DataError line; a full disk while the block writes is one OutputError line."""
    try:
        with tarfile.open(archive) as tar:
            yield tar
    except OSError as error:
        if error.errno in NO_SPACE:
            raise output_error(Path(out), error) from None
        raise DataError(f"cannot read archive {archive}: {_first_line(error)}") from None
    except (tarfile.TarError, EOFError, zlib_error()) as error:
        raise DataError(f"cannot read archive {archive}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    """One line of an error: tarfile lists every compression it tried on lines of their own."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].rstrip(":") + (" as tar, tar.gz, tar.bz2 or tar.xz" if len(lines) > 1 else "")


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a tar archive into `target` after checking every member; all or nothing."""
    with atomic_directory(target) as staging, reading_archive(archive, target) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, staging)
        tar.extractall(staging, members=members, filter="data")
    return Path(target)


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


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
def _content_sha256(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for split in sorted(splits):
        images, labels = splits[split]
        digest.update(split.encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


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
        "sha256": _content_sha256(splits),
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
    if verify and _content_sha256(arrays) != meta.get("sha256"):
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
