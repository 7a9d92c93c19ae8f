"""ImageNet (ILSVRC-2012) from a local image folder: layout checks, an index, a streaming loader, 10-crop testing.

Expected layout (the path in config.yaml's datasets.imagenet.path):

    <path>/train/<wnid>/*.JPEG     e.g. train/n01440764/n01440764_10026.JPEG (1000 folders, 1.28M images)
    <path>/val/<wnid>/*.JPEG       e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG (1000 folders, 50k images)

The official training archive holds one tar per class: extract each `<wnid>.tar` into `train/<wnid>/`. The
official validation archive is flat (50k JPEGs); `resnet-repro imagenet-val-layout` sorts it into class folders
with the devkit's ground truth (see its help, or the README section "ImageNet").

Nothing is copied: the index stage (`resnet-repro index-imagenet`) writes a small prepared folder

    data/prepared/imagenet/meta.json   classes, counts, a fingerprint of the file list (names and sizes), the
                                       source path, the RGB mean/std and colour PCA of a fixed sample of images
    data/prepared/imagenet/train.tsv   <relative path>\\t<label> per training image, sorted
    data/prepared/imagenet/val.tsv     the same for the validation images

which every rank of a distributed run reads, so all ranks agree on the sample order without listing 1.28M files.

Augmentation (paper section 3.4, after Krizhevsky et al. 2012): the shorter side is resized to a random size in
[256, 480], a 224x224 crop is taken at random, flipped horizontally with probability 1/2, the standard (AlexNet)
colour augmentation adds `eigvec @ (alpha * eigval)` with alpha ~ N(0, 0.1) per image, and the mean is subtracted.
Mean: the paper subtracts a per-pixel mean image; with scale augmentation a crop covers a different part of a
differently sized image every time, so the mean image of the training crops is spatially flat and equals the
per-channel RGB mean. We subtract that per-channel mean (measured on a fixed sample of the training images by the
index stage), without dividing by the std unless settings.normalize is "channel".
Testing: the shorter side resized to 256, then the standard 10-crop (4 corners + centre, and their mirrors),
softmax averaged over the crops (Table 2); the centre crop alone is the quick single-crop figure (Fig. 4's curves).

Randomness: each sample's augmentation comes from a generator seeded by (run seed, epoch, sample index). Ranks see
disjoint samples (DistributedSampler), so their augmentation streams are distinct; and since nothing depends on
which rank or DataLoader worker decodes a sample, results do not depend on the number of GPUs or workers and a
resumed run regenerates exactly what the interrupted one would have used.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

JPEG_SUFFIXES = {".jpeg", ".jpg"}
INDEX_FORMAT = "imagenet-index-1"
STATS_SAMPLE = 1000  # images decoded by the index stage for the mean/std/PCA
STATS_SIZE = 64  # they are resized to this square first (the statistics are of colours, not of detail)
AUGMENT_DEFAULTS: dict[str, Any] = {"scale": [256, 480], "crop": 224, "flip": True, "color": 0.1, "test_resize": 256}
LAYOUT_HINT = "expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ILSVRC-2012 in image-folder layout)"


# ------------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    root: Path
    classes: list[str]


def _class_dirs(split_dir: Path) -> tuple[list[str], list[str]]:
    """Sub-folders and plain files directly in a split folder (hidden entries ignored)."""
    folders, files = [], []
    with os.scandir(split_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            (folders if entry.is_dir() else files).append(entry.name)
    return sorted(folders), sorted(files)


def _has_jpeg(folder: Path) -> bool:
    with os.scandir(folder) as entries:  # stops at the first image: cheap even on network file systems
        return any(Path(e.name).suffix.lower() in JPEG_SUFFIXES for e in entries)


def validate_layout(path: Path | str, where: str = "datasets.imagenet.path") -> Layout:
    """Check the folder layout without reading any image; raise a DataError naming what was expected.

    Cheap enough for plan time (a scandir per class folder that stops at the first JPEG)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{where}: {root} does not exist; {LAYOUT_HINT}")
    if not root.is_dir():
        raise DataError(f"{where}: {root} is not a folder; {LAYOUT_HINT}")
    found: dict[str, list[str]] = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{where}: {root} has no {split}/ folder; {LAYOUT_HINT}")
        folders, files = _class_dirs(split_dir)
        tars = [f for f in files if f.endswith(".tar")]
        jpegs = [f for f in files if Path(f).suffix.lower() in JPEG_SUFFIXES]
        if tars:
            raise DataError(
                f"{where}: {split_dir} holds {len(tars)} .tar files ({tars[0]}, ...): the official training archive "
                f"has one tar per class; extract each <wnid>.tar into {split}/<wnid>/"
            )
        if jpegs and split == "val":
            raise DataError(
                f"{where}: {split_dir} holds {len(jpegs)} JPEGs directly (the official archive's flat layout); sort "
                "them into val/<wnid>/ folders with `resnet-repro imagenet-val-layout` (uses the devkit's ground truth)"
            )
        if jpegs:
            raise DataError(f"{where}: {split_dir} holds JPEGs directly ({jpegs[0]}); {LAYOUT_HINT}")
        if not folders:
            raise DataError(f"{where}: {split_dir} has no class folders; {LAYOUT_HINT}")
        empty = [name for name in folders if not _has_jpeg(split_dir / name)]
        if empty:
            raise DataError(
                f"{where}: {split_dir / empty[0]} has no .JPEG images ({len(empty)} such class folders); {LAYOUT_HINT}"
            )
        found[split] = folders
    if found["train"] != found["val"]:
        only_train = sorted(set(found["train"]) - set(found["val"]))
        only_val = sorted(set(found["val"]) - set(found["train"]))
        raise DataError(
            f"{where}: train/ and val/ must have the same class folders; only in train/: {only_train[:5]}, "
            f"only in val/: {only_val[:5]}"
        )
    return Layout(root, found["train"])


# -------------------------------------------------------------------------------------------------- index
@dataclass
class Index:
    """The prepared index folder: meta.json plus the sorted (path, label) lists of both splits."""

    folder: Path
    meta: dict
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]

    @property
    def root(self) -> Path:
        return Path(self.meta["root"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])


def _list_split(root: Path, split: str, classes: list[str]) -> list[tuple[str, int, int]]:
    """(relative path, label, size in bytes) of every JPEG, class folders listed in parallel (network file systems
    answer many small requests better concurrently)."""

    def one(label: int) -> list[tuple[str, int, int]]:
        folder = root / split / classes[label]
        with os.scandir(folder) as entries:
            rows = [
                (f"{split}/{classes[label]}/{e.name}", label, e.stat().st_size)
                for e in entries
                if Path(e.name).suffix.lower() in JPEG_SUFFIXES and e.is_file()
            ]
        return sorted(rows)

    with ThreadPoolExecutor(16) as pool:
        return [row for rows in pool.map(one, range(len(classes))) for row in rows]


def _color_stats(root: Path, paths: list[str]) -> dict[str, list]:
    """Per-channel mean and std and the RGB covariance eigen-decomposition (AlexNet's colour PCA), on [0, 1]
    pixel values of a fixed, evenly spaced sample of training images."""
    from PIL import Image

    step = max(1, len(paths) // STATS_SAMPLE)
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    count = 0
    for rel in paths[::step][:STATS_SAMPLE]:
        with Image.open(root / rel) as image:
            image.draft("RGB", (STATS_SIZE, STATS_SIZE))
            pixels = np.asarray(image.convert("RGB").resize((STATS_SIZE, STATS_SIZE)), dtype=np.float64) / 255
        flat = pixels.reshape(-1, 3)
        total += flat.sum(0)
        outer += flat.T @ flat
        count += len(flat)
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = eigval.argsort()[::-1]
    eigval, eigvec = eigval[order].clip(min=0), eigvec[:, order]
    eigvec *= np.sign(eigvec[0:1, :] + 1e-12)  # a fixed sign per eigenvector: the same numbers on every machine
    return {
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in np.sqrt(np.diag(cov))],
        "eigval": [round(float(v), 6) for v in eigval],
        "eigvec": [[round(float(v), 6) for v in row] for row in eigvec],
    }


def build_index(path: Path | str, out: Path | str) -> Path:
    """Validate the layout, list both splits, fingerprint them, measure colour statistics; write the index folder
    atomically (a temporary sibling renamed into place)."""
    from .runfiles import atomic_directory, atomic_write_bytes

    layout = validate_layout(path, where="--path")
    root = layout.root.resolve()
    splits = {split: _list_split(root, split, layout.classes) for split in ("train", "val")}
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for rel, label, size in splits[split]:
            digest.update(f"{rel}\t{label}\t{size}\n".encode())
    meta = {
        "format": INDEX_FORMAT,
        "name": "imagenet",
        "root": str(root),
        "classes": layout.classes,
        "num_classes": len(layout.classes),
        "counts": {split: len(rows) for split, rows in splits.items()},
        "sha256": digest.hexdigest(),  # of names, labels and sizes: a different copy gets a different run identity
        "channels": 3,
        "stats": _color_stats(root, [rel for rel, _, _ in splits["train"]]),
    }
    out = Path(out)
    with atomic_directory(out) as tmp:
        for split, rows in splits.items():
            atomic_write_bytes(tmp / f"{split}.tsv", "".join(f"{rel}\t{label}\n" for rel, label, _ in rows).encode())
        atomic_write_bytes(tmp / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out


def is_index(folder: Path | str) -> bool:
    meta = Path(folder) / "meta.json"
    try:
        return json.loads(meta.read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError):
        return False


def load_index(folder: Path | str) -> Index:
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{folder}: not an ImageNet index ({error}); run `resnet-repro index-imagenet`") from None
    if meta.get("format") != INDEX_FORMAT:
        raise DataError(f"{folder}/meta.json is not an ImageNet index; run `resnet-repro index-imagenet`")

    def read(split: str) -> list[tuple[str, int]]:
        rows = []
        for line in (folder / f"{split}.tsv").read_text().splitlines():
            rel, label = line.rsplit("\t", 1)
            rows.append((rel, int(label)))
        return rows

    index = Index(folder, meta, read("train"), read("val"))
    if not index.root.is_dir():
        raise DataError(f"{folder}: the indexed ImageNet copy {index.root} is gone; index it again")
    return index


# ----------------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Augment:
    scale: tuple[int, int]
    crop: int
    flip: bool
    color: float
    test_resize: int

    @classmethod
    def from_settings(cls, augment: dict | None) -> Augment:
        """The ImageNet augmentation from TrainSettings.augment (defaults: the paper's)."""
        values = {**AUGMENT_DEFAULTS, **(augment or {})}
        unknown = sorted(set(values) - set(AUGMENT_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"setting 'augment': {unknown[0]!r} is not an ImageNet augmentation key; known: "
                f"{sorted(AUGMENT_DEFAULTS)}"
            )
        low, high = (int(v) for v in values["scale"])
        crop, test_resize = int(values["crop"]), int(values["test_resize"])
        if not 0 < crop <= low <= high:
            raise ConfigError(f"setting 'augment': need 0 < crop <= scale[0] <= scale[1] (got {values})")
        if test_resize < crop:
            raise ConfigError(f"setting 'augment': test_resize must be >= crop (got {values})")
        if float(values["color"]) < 0:
            raise ConfigError(f"setting 'augment': color must be >= 0 (got {values['color']})")
        return cls((low, high), crop, bool(values["flip"]), float(values["color"]), test_resize)


def _open_rgb(path: Path, shorter: int):
    """Decode a JPEG, letting libjpeg downscale by 1/2, 1/4 or 1/8 while the shorter side stays >= `shorter`
    (draft mode: much cheaper than decoding at full size and resizing)."""
    from PIL import Image

    with open(path, "rb") as handle:
        payload = handle.read()
    image = Image.open(io.BytesIO(payload))
    width, height = image.size
    factor = shorter / min(width, height)
    image.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
    return image.convert("RGB")


def _resize_shorter(image, shorter: int):
    from PIL import Image

    width, height = image.size
    if width <= height:
        size = (shorter, max(shorter, round(height * shorter / width)))
    else:
        size = (max(shorter, round(width * shorter / height)), shorter)
    return image.resize(size, Image.BILINEAR) if size != image.size else image


def _chw(image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation randomness of one sample in one epoch: from these three numbers alone."""
    return np.random.default_rng([seed, epoch, index])


class TrainImages:
    """Training samples, decoded and augmented in DataLoader workers. Items are requested as (epoch, index) so the
    augmentation seed travels with the request (workers may outlive an epoch). Returns the uint8 crop [3,c,c], the
    label and the colour shift [3] (added with the mean subtraction on the device, where it is a cheap batch op)."""

    def __init__(self, index: Index, augment: Augment, seed: int) -> None:
        self.root, self.items, self.augment, self.seed = index.root, index.train, augment, seed
        stats = index.meta["stats"]
        self.eigval = np.asarray(stats["eigval"], dtype=np.float64)
        self.eigvec = np.asarray(stats["eigvec"], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, request: tuple[int, int]) -> tuple[Any, int, Any]:
        import torch

        epoch, index = request
        rng = sample_generator(self.seed, epoch, index)
        aug = self.augment
        shorter = int(rng.integers(aug.scale[0], aug.scale[1] + 1))
        rel, label = self.items[index]
        image = _resize_shorter(_open_rgb(self.root / rel, shorter), shorter)
        width, height = image.size
        left = int(rng.integers(0, width - aug.crop + 1))
        top = int(rng.integers(0, height - aug.crop + 1))
        pixels = _chw(image.crop((left, top, left + aug.crop, top + aug.crop)))
        if aug.flip and rng.random() < 0.5:
            pixels = np.ascontiguousarray(pixels[:, :, ::-1])
        alpha = rng.normal(0.0, aug.color, 3) if aug.color > 0 else np.zeros(3)
        shift = self.eigvec @ (alpha * self.eigval)
        return torch.from_numpy(pixels), label, torch.from_numpy(shift.astype(np.float32))


class TestImages:
    """Validation samples: the shorter side resized to test_resize, then the centre crop only or the 10 crops
    (centre first, then the four corners, then the mirrors of all five) as uint8 [views,3,c,c]."""

    def __init__(self, index: Index, augment: Augment, ten_crop: bool, items: list[tuple[str, int]] | None = None):
        self.root, self.augment, self.ten_crop = index.root, augment, ten_crop
        self.items = index.val if items is None else items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch

        rel, label = self.items[index]
        size, crop = self.augment.test_resize, self.augment.crop
        image = _resize_shorter(_open_rgb(self.root / rel, size), size)
        width, height = image.size
        corners = [((width - crop) // 2, (height - crop) // 2)]
        if self.ten_crop:
            corners += [(0, 0), (width - crop, 0), (0, height - crop), (width - crop, height - crop)]
        views = [_chw(image.crop((x, y, x + crop, y + crop))) for x, y in corners]
        if self.ten_crop:
            views += [np.ascontiguousarray(v[:, :, ::-1]) for v in views]
        return torch.from_numpy(np.stack(views)), label


# Stop signals are for the training process, which checkpoints and then shuts its loader workers down itself.
WORKER_DEAF_TO = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def worker_init(_worker_id: int, trainer: int | None = None) -> None:
    """DataLoader workers: one thread each (there are many of them), and deaf to stop signals, which are meant for
    the training process (it checkpoints and then shuts the workers down itself). A worker started from the
    forkserver also ends when process `trainer` does (see `exit_with`)."""
    import torch

    torch.set_num_threads(1)
    for sig in WORKER_DEAF_TO:
        signal.signal(sig, signal.SIG_IGN)
    if trainer is not None:
        exit_with(trainer)


def exit_with(pid: int) -> None:
    """End this process as soon as process `pid` ends, however it ends. Needed by loader workers forked by the
    forkserver: torch's worker watchdog watches the parent, which is the server, not the trainer, and the server
    lives as long as any of its children does, so a trainer killed outright (SIGKILL, the OOM killer, torchrun
    ending a rank) would leave its workers and the server running forever, deaf to SIGTERM."""
    import select
    import threading
    import time

    try:
        handle = os.pidfd_open(pid)  # readable once the process has ended; immune to pid reuse
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd here (not Linux, or a kernel before 5.3): poll instead
        handle = None

    def wait_then_exit() -> None:
        if handle is not None:
            select.select([handle], [], [])
        else:
            while _alive(pid):
                time.sleep(1.0)
        os._exit(0)  # nothing to save: a worker holds only batches the trainer can no longer take

    threading.Thread(target=wait_then_exit, name=f"exit-with-{pid}", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EpochSampler:
    """Wraps a DistributedSampler: yields (epoch, index) requests for one epoch, skipping the first `skip` indices
    of this rank's share (resuming mid-epoch). `start` moves it to another epoch: one DataLoader with persistent
    workers serves the whole run, since the sampler is iterated in the training process."""

    def __init__(self, sampler: Any, epoch: int = 0, skip: int = 0) -> None:
        self.sampler = sampler
        self.start(epoch, skip)

    def start(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)  # the per-epoch reshuffle, the same permutation on every rank
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield self.epoch, int(index)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def start_worker_server() -> None:
    """Start multiprocessing's forkserver, from which `loader_options` starts the loader workers, deaf to stop
    signals. torchrun stops its workers by signalling their whole process group: a forkserver that died of that
    SIGTERM would take its children, the loader workers, with it (they exit when their parent goes) before the
    trainer could checkpoint. An ignored signal stays ignored across exec and fork, so the server and every worker
    it forks ignore them from their first instruction. The workers end with the trainer (`exit_with`), and the
    server once they and the trainer have."""
    import multiprocessing
    import multiprocessing.forkserver

    multiprocessing.set_forkserver_preload(["torch", "resnet_repro.imagenet"])  # workers start in milliseconds
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in WORKER_DEAF_TO}
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def loader_options(workers: int, pin_memory: bool) -> dict[str, Any]:
    """DataLoader options for decoding workers in a training process. The workers start once (persistent) from a
    forkserver (see `start_worker_server`), never by forking the trainer itself: a fork copies the locks that the
    trainer's other threads (gloo, OpenMP, pin-memory) may hold at that instant, and a child that needs one of them
    waits forever, a rare hang that torch's DataLoader documents for fork. Scripts that call the trainer need an
    `if __name__ == "__main__":` guard, as for any start method other than fork."""
    if workers == 0:
        return {"num_workers": 0, "pin_memory": pin_memory}
    start_worker_server()
    return {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "worker_init_fn": functools.partial(worker_init, trainer=os.getpid()),
        "prefetch_factor": 4,
        "persistent_workers": True,
        "multiprocessing_context": "forkserver",
    }


def normalizer(index: Index, normalize: str, device: Any) -> tuple[Any, Any]:
    """Mean and divisor ([1,3,1,1] on the device) for [0, 1] pixels: the per-channel mean, and the std only when
    settings.normalize is "channel" (the paper subtracts the mean only)."""
    import torch

    stats = index.meta["stats"]
    mean = torch.tensor(stats["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(stats["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std if normalize == "channel" else torch.ones_like(std)


# ----------------------------------------------------------------------------------------------- evaluation
# ----------------------------------------------------------------------------------- official val archive
def layout_val(devkit: Path | str, images: Path | str, out: Path | str) -> int:
    """Sort the official flat validation images (a folder or ILSVRC2012_img_val.tar) into out/<wnid>/ using the
    devkit's ground truth (ILSVRC2012_devkit_t12.tar.gz: data/meta.mat and
    data/ILSVRC2012_validation_ground_truth.txt). Returns the number of images placed."""
    import shutil

    from scipy.io import loadmat

    from .extract import reading_archive

    out = Path(out)
    with reading_archive(Path(devkit), out) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        try:
            meta_bytes = tar.extractfile(members["meta.mat"]).read()
            truth = tar.extractfile(members["ILSVRC2012_validation_ground_truth.txt"]).read().decode().split()
        except KeyError as error:
            raise DataError(f"{devkit}: no {error.args[0]} (expected the ILSVRC2012_devkit_t12 archive)") from None
    try:
        synsets = loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
        wnids = [wnid_of[int(t)] for t in truth]  # line k: the class of ILSVRC2012_val_<k>.JPEG
    except (KeyError, ValueError) as error:  # what a devkit that is not the official one raises here
        raise DataError(
            f"{devkit}: not the ILSVRC2012_devkit_t12 archive (meta.mat or ground truth: {error!r})"
        ) from None
    images = Path(images)
    placed = 0
    if images.is_dir():
        for k, wnid in enumerate(wnids, start=1):
            source = images / f"ILSVRC2012_val_{k:08d}.JPEG"
            if source.is_file():
                (out / wnid).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, out / wnid / source.name)
                placed += 1
    else:
        with reading_archive(images, out) as tar:
            for member in tar:
                name = Path(member.name).name
                if not member.isfile() or not name.startswith("ILSVRC2012_val_"):
                    continue
                wnid = wnids[int(name.split("_")[-1].split(".")[0]) - 1]
                (out / wnid).mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(out / wnid / name, "wb") as target:
                    shutil.copyfileobj(source, target)
                placed += 1
    return placed
