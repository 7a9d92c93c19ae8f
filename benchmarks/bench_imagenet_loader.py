"""Decode throughput of the streaming ImageNet loader: images/s per DataLoader worker.

Writes a synthetic ImageNet-layout folder of ILSVRC-sized JPEGs (default 500x375, quality 90, smooth textures plus
noise: about the pixel count and file size of an average ILSVRC-2012 training image, ~110 kB), indexes it, and times

  (a) one worker's work, in this process: TrainImages[(epoch, i)] = read, decode (libjpeg draft mode), resize the
      shorter side to a random size in [256, 480], random 224 crop, flip, colour shift: images/s per worker;
  (b) the same through a DataLoader with W workers (batches of 32, as one GPU's share of the paper's batch 256);
  (c) the test-time 10-crop decode (TestImages, shorter side 256) per worker.

A GPU at full speed needs its per-GPU images/s from the loader: e.g. a ResNet-34 step on one current GPU trains
about 1500-2500 images/s (bf16), so it needs that figure / (a) workers per GPU.

    python benchmarks/bench_imagenet_loader.py [--images 256] [--size 500x375] [--workers 1,2] [--json PATH]
    python benchmarks/bench_imagenet_loader.py --path /data/imagenet   # a real copy (indexes it first: slow)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from resnet_repro.imagenet import Augment, TestImages, TrainImages, build_index, load_index, worker_init  # noqa: E402


def synthetic_imagenet(root: Path, images: int, size: tuple[int, int], classes: int = 8, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    per_class = max(1, images // classes)
    for c in range(classes):
        wnid = f"n{1440764 + c:08d}"
        for split, count in (("train", per_class), ("val", max(1, per_class // 4))):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                coarse = rng.uniform(0, 255, (24, 32, 3)).astype(np.uint8)
                texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
                pixels = np.clip(texture + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{k}.JPEG", quality=90)
    return root


def per_worker_rate(dataset: Any, requests: list[Any], repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for request in requests:
            dataset[request]
        rates.append(len(requests) / (time.perf_counter() - start))
    return rates


def loader_rate(dataset: Any, requests: list[Any], workers: int, batch: int = 32) -> float:
    import torch

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=requests,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        drop_last=True,
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not decode throughput
    start, seen = time.perf_counter(), 0
    for x, *_ in iterator:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", help="a real ImageNet folder (default: a synthetic one in a temporary folder)")
    parser.add_argument("--images", type=int, default=256, help="synthetic training images (default 256)")
    parser.add_argument("--size", default="500x375", help="synthetic image size WxH (default 500x375)")
    parser.add_argument("--workers", default="1,2", help="DataLoader worker counts to time (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # as in a worker
    with tempfile.TemporaryDirectory() as tmp:
        if args.path:
            root = Path(args.path)
        else:
            width, height = (int(v) for v in args.size.split("x"))
            root = synthetic_imagenet(Path(tmp) / "imagenet", args.images, (width, height))
        index = load_index(build_index(root, Path(tmp) / "index"))
        train = TrainImages(index, Augment.from_settings(None), seed=0)
        count = min(len(train), args.images)
        requests = [(0, i) for i in range(count)]
        sizes = [(index.root / rel).stat().st_size for rel, _ in index.train[:count]]
        train_rates = per_worker_rate(train, requests, args.repeats)
        test = TestImages(index, Augment.from_settings(None), ten_crop=True)
        test_requests = list(range(min(len(test), 64)))
        test_rates = per_worker_rate(test, test_requests, args.repeats)
        loaders = {}
        for workers in (int(w) for w in args.workers.split(",")):
            loaders[workers] = round(loader_rate(train, requests * 2, workers), 1)

    result = {
        "images": count,
        "mean_file_kb": round(statistics.mean(sizes) / 1024, 1),
        "train_images_per_s_per_worker": round(statistics.median(train_rates), 1),
        "train_rates": [round(r, 1) for r in train_rates],
        "test_10crop_images_per_s_per_worker": round(statistics.median(test_rates), 1),
        "dataloader_images_per_s": loaders,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
