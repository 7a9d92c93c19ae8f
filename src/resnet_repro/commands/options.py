"""The options of the subcommands that run a trained model (its run folder, its data, the device), and taking a GPU
slot before anything touches CUDA."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..paths import MODEL_FILE

DEVICE_ENV = "RESNET_REPRO_DEVICE"  # the default of train's, evaluate's and responses' --device


def add_trained_run_arguments(parser: argparse.ArgumentParser, data_help: str, out: str) -> None:
    """--run, --data, --out (default: `out` in the run folder) and --device: a trained run and what it is run on."""
    parser.add_argument("--run", required=True, help=f"run folder holding {MODEL_FILE}")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", help=f"file to write (default: <run>/{out})")
    parser.set_defaults(default_out=out)
    add_device_option(parser)


def trained_run(args: argparse.Namespace) -> tuple[Path, Path]:
    """The model file and the output file that --run and --out name."""
    run = Path(args.run)
    return run / MODEL_FILE, Path(args.out) if args.out else run / args.default_out


def add_device_option(parser: argparse.ArgumentParser) -> None:
    # A machine whose GPUs must not be used (a test cluster's fake GPUs, a node with a broken driver): the jobs there
    # run on the CPU without a change to any stage command.
    parser.add_argument(
        "--device",
        default=os.environ.get(DEVICE_ENV) or "auto",
        help=f"auto (CUDA if present), cpu, cuda, cuda:N (default: ${DEVICE_ENV} or auto)",
    )


def take_gpu_slot(device: str, packable: bool) -> None:
    """A GPU job's slot (resnet_repro.gpu): distinct devices for concurrent jobs; a slot PyTorch cannot use stops
    the job. Before anything touches CUDA, which reads CUDA_VISIBLE_DEVICES once. An explicit --device cuda:N or
    cpu takes none. `packable`: a small CIFAR job may share its GPU (RESNET_REPRO_GPU_RUNS_PER_DEVICE)."""
    if device not in ("auto", "cuda"):
        return
    from ..gpu import acquire_gpu_slot, require_cuda, runs_per_device_from_env

    slot = acquire_gpu_slot(runs_per_device=runs_per_device_from_env() if packable else 1)
    if slot is not None:  # held until the process ends
        print(f"using GPU slot {slot.name} (CUDA_VISIBLE_DEVICES={slot.entry})", file=sys.stderr, flush=True)
        require_cuda([slot])
