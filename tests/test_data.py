"""Dataset acquisition and preparation against archives in the exact official layouts, served for real."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cifar_archive, md5_of, run_cli

from resnet_repro.device_data import augment_batch
from resnet_repro.errors import DataError
from resnet_repro.extract import safe_extract
from resnet_repro.fetch import fetch
from resnet_repro.prepare import prepare
from resnet_repro.prepared import load_prepared


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_over_http_verifies_md5(http_server, cifar10_archive: Path, tmp_path: Path) -> None:
    base, served, _ = http_server
    (served / "cifar-10-python.tar.gz").write_bytes(cifar10_archive.read_bytes())
    out = tmp_path / "raw" / "cifar-10-python.tar.gz"
    result = run_cli(
        "fetch",
        "cifar10",
        "--source",
        f"{base}/cifar-10-python.tar.gz",
        "--md5",
        md5_of(cifar10_archive),
        "--out",
        str(out),
    )
    assert result.stdout.strip() == str(out)
    assert out.read_bytes() == cifar10_archive.read_bytes()
    assert _leftovers(out.parent) == ["cifar-10-python.tar.gz"]


def test_fetch_from_file_url_and_local_path(cifar10_archive: Path, tmp_path: Path) -> None:
    digest = md5_of(cifar10_archive)
    for index, source in enumerate((cifar10_archive.as_uri(), str(cifar10_archive))):
        out = tmp_path / f"copy{index}.tar.gz"
        fetch(source, out, digest, quiet=True)
        assert md5_of(out) == digest


def test_fetch_retries_transient_errors(http_server, cifar10_archive: Path, tmp_path: Path) -> None:
    base, served, handler = http_server
    (served / "a.tar.gz").write_bytes(cifar10_archive.read_bytes())
    handler.failures_left["/a.tar.gz"] = 2
    out = fetch(f"{base}/a.tar.gz", tmp_path / "a.tar.gz", md5_of(cifar10_archive), retries=3, quiet=True)
    assert out.is_file() and handler.failures_left["/a.tar.gz"] == 0


def test_corrupted_archive_is_refused_and_nothing_is_left(http_server, cifar10_archive: Path, tmp_path: Path) -> None:
    base, served, _ = http_server
    payload = bytearray(cifar10_archive.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    (served / "bad.tar.gz").write_bytes(bytes(payload))
    out = tmp_path / "raw" / "bad.tar.gz"
    result = run_cli(
        "fetch",
        "cifar10",
        "--source",
        f"{base}/bad.tar.gz",
        "--md5",
        md5_of(cifar10_archive),
        "--out",
        str(out),
        check=False,
    )
    assert result.returncode == 2
    assert "checksum mismatch" in result.stderr and md5_of(cifar10_archive) in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.stderr and len(errors) == 1
    assert _leftovers(out.parent) == []


def test_truncated_archive_is_refused(http_server, cifar10_archive: Path, tmp_path: Path) -> None:
    base, served, handler = http_server
    data = cifar10_archive.read_bytes()
    (served / "short.tar.gz").write_bytes(data[: len(data) // 3])  # served complete, but the file is cut
    (served / "cut.tar.gz").write_bytes(data)  # the connection ends before Content-Length
    handler.lie_length.add("/cut.tar.gz")
    digest = md5_of(cifar10_archive)
    out = tmp_path / "raw"
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(f"{base}/short.tar.gz", out / "short.tar.gz", digest, quiet=True)
    with pytest.raises(DataError, match=r"truncated|could not download"):
        fetch(f"{base}/cut.tar.gz", out / "cut.tar.gz", digest, retries=1, quiet=True)
    assert _leftovers(out) == []


def test_existing_good_download_is_kept(cifar10_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.tar.gz"
    fetch(str(cifar10_archive), out, md5_of(cifar10_archive), quiet=True)
    before = out.stat().st_mtime_ns
    fetch("https://unreachable.invalid/x.tar.gz", out, md5_of(cifar10_archive), quiet=True)
    assert out.stat().st_mtime_ns == before


def _tar_with(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("ok.txt"), _file("../escape.txt")], "leaves the target folder"),
        ([_file("/etc/evil.txt")], "absolute path"),
        ([_link("data/link", "../../outside")], "points outside"),
        ([_link("data/abs", "/etc/passwd")], "points outside"),
        ([_link("data/hard", "../../x", hard=True)], "points outside"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, members: list[tarfile.TarInfo], message: str) -> None:
    archive = _tar_with(tmp_path / "evil.tar.gz", members)
    target = tmp_path / "out" / "extracted"
    with pytest.raises(DataError, match=message):
        safe_extract(archive, target)
    assert _leftovers(tmp_path / "out") == []
    assert not (tmp_path / "escape.txt").exists()


def test_path_traversal_archive_refused_by_prepare_cli(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path / "cifar-10-python.tar.gz", [_file("cifar-10-batches-py/../../pwned")])
    result = run_cli("prepare", "cifar10", "--raw", str(archive), "--out", str(tmp_path / "p"), check=False)
    assert result.returncode == 2 and "unsafe archive" in result.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_prepare_official_layout(tmp_path: Path, dataset: str) -> None:
    archive = make_cifar_archive(tmp_path / f"{dataset}.tar.gz", dataset, per_batch=8, test=12)
    out = tmp_path / "prepared" / dataset
    prepare(dataset, out, archive)
    data = load_prepared(out)
    assert data.train_images.shape == (40, 3, 32, 32) and data.test_images.shape == (12, 3, 32, 32)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    assert data.num_classes == (10 if dataset == "cifar10" else 100)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 40, "test": 12} and len(meta["mean"]) == 3
    # Row layout of the official format: 1024 red, then green, then blue values per image.
    with tarfile.open(archive) as tar:
        name = "cifar-10-batches-py/data_batch_1" if dataset == "cifar10" else "cifar-100-python/train"
        batch = pickle.load(tar.extractfile(name), encoding="bytes")
    assert np.array_equal(data.train_images[0, 1].ravel(), batch[b"data"][0][1024:2048])
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.npz", "train.npz"]


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    root = tmp_path / "raw" / "cifar-100-python"
    root.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (root / name).write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        prepare("cifar100", tmp_path / "p", tmp_path / "raw")


def test_corrupt_prepared_data_is_detected(tmp_path: Path, digits_dir: Path) -> None:
    copy = tmp_path / "digits"
    copy.mkdir()
    for f in digits_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    with np.load(copy / "train.npz") as data:
        images, labels = data["images"].copy(), data["labels"]
    images[0, 0, 0, 0] ^= 1
    np.savez(copy / "train.npz", images=images, labels=labels)
    with pytest.raises(DataError, match="checksum"):
        load_prepared(copy)
    (copy / "test.npz").write_bytes(b"garbage")
    result = run_cli("evaluate", "--run", str(tmp_path), "--data", str(copy), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_digits_and_validation_split(digits_dir: Path) -> None:
    data = load_prepared(digits_dir)
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert data.meta["channels"] == 1 and data.meta["image_size"] == 8
    assert data.meta["augment"] == {"pad": 1, "flip": False}
    val = load_prepared(digits_dir, split="val")
    assert len(val.test_labels) == len(data.train_labels) // 10
    assert len(val.train_labels) + len(val.test_labels) == len(data.train_labels)


def _write_image_folder(root: Path, size: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for name in ("cat", "dog", "ship"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{k}.png")


def test_image_folder_from_folder_and_tarball(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "src" / "mydata")
    out = prepare("imagefolder", tmp_path / "p1", tmp_path / "src" / "mydata")
    data = load_prepared(out)
    assert data.meta["classes"] == ["cat", "dog", "ship"]
    assert data.train_images.shape == (12, 3, 12, 12) and data.test_images.shape == (6, 3, 12, 12)
    with tarfile.open(tmp_path / "mydata.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "mydata", arcname="mydata")
    from_tar = load_prepared(prepare("imagefolder", tmp_path / "p2", tmp_path / "mydata.tar.gz"))
    assert np.array_equal(from_tar.train_images, data.train_images)


def test_augment_batch_crops_and_flips_like_the_paper() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    offsets = torch.tensor([[0, 0], [2, 1]])
    flips = torch.tensor([False, True])
    out = augment_batch(x, offsets, flips, pad=1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 0:4, 0:4])
    assert torch.equal(out[1], padded[1, :, 2:6, 1:5].flip(2))
    assert out[0, 0, 0, 0] == 0  # zero padding, as the paper
