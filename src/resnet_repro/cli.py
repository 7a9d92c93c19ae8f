"""`resnet-repro`: one command with a subcommand per pipeline step.

Every user error (bad option, unknown model, missing or corrupt file, full disk) is one line on stderr and a
non-zero exit status, never a traceback: those are the project's own error classes (errors.py). Anything else is a
bug and keeps its traceback, followed by a line asking to report it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import __version__
from .errors import ConfigError, ReproError, UnknownModelError
from .paths import METRICS_FILE, MODEL_FILE, RESPONSES_FILE, TRAINING_FILES, raw_archive

DEVICE_ENV = "RESNET_REPRO_DEVICE"  # the default of train's, evaluate's and responses' --device

if TYPE_CHECKING:
    from .settings import DistributedOptions, TrainSettings


def _parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        overrides[key.strip()] = parsed
    return overrides


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import CATALOG
    from .models import build_model, count_parameters

    for name, info in sorted(CATALOG.items(), key=lambda item: (item[1].family, item[0])):
        if args.family and info.family != args.family:
            continue
        line = f"{name:18} {info.family:9} {info.description}"
        if args.params:
            size = 224 if info.family == "imagenet" else 32
            classes = 1000 if info.family == "imagenet" else 10
            line += f"  [{count_parameters(build_model(name, classes, 3, size)):,} params, {classes} classes]"
        print(line)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .data import ARCHIVES, fetch

    if args.dataset not in ARCHIVES:
        raise ConfigError(f"fetch knows {', '.join(ARCHIVES)}; digits needs no download")
    spec = ARCHIVES[args.dataset]
    out = Path(args.out or raw_archive(spec.filename))
    path = fetch(args.source or spec.url, out, args.md5 or spec.md5, retries=args.retries, quiet=args.quiet)
    print(path)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare

    print(prepare(args.dataset, Path(args.out), Path(args.raw) if args.raw else None))
    return 0


def _run_settings(args: argparse.Namespace) -> TrainSettings:
    """A run's settings: from config.yaml (pipeline mode, --config/--experiment) or --schedule/--set (default: the
    subcommand's schedule, see add_run_arguments); and the model name checked, both before anything heavy starts."""
    if args.config:
        from .plan import run_settings

        if not args.experiment:
            raise ConfigError("--config needs --experiment (the experiment whose settings this run uses)")
        if args.set or args.schedule:
            raise ConfigError("--config takes the schedule and settings from the config; drop --schedule/--set")
        settings = run_settings(args.config, args.experiment, args.model)
    else:
        from .settings import resolve_settings

        settings = resolve_settings(args.schedule or args.default_schedule, _parse_overrides(args.set))
    _validate_model(args.model)
    return settings


def _take_gpu_slot(device: str, packable: bool) -> None:
    """A GPU job's slot (resnet_repro.gpu): distinct devices for concurrent jobs; a slot PyTorch cannot use stops
    the job. Before anything touches CUDA, which reads CUDA_VISIBLE_DEVICES once. An explicit --device cuda:N or
    cpu takes none. `packable`: a small CIFAR job may share its GPU (RESNET_REPRO_GPU_RUNS_PER_DEVICE)."""
    if device not in ("auto", "cuda"):
        return
    from .gpu import acquire_gpu_slot, require_cuda, runs_per_device_from_env

    slot = acquire_gpu_slot(runs_per_device=runs_per_device_from_env() if packable else 1)
    if slot is not None:  # held until the process ends
        print(f"using GPU slot {slot.name} (CUDA_VISIBLE_DEVICES={slot.entry})", file=sys.stderr, flush=True)
        require_cuda([slot])


def cmd_train(args: argparse.Namespace) -> int:
    from .train import RunSpec, train

    settings = _run_settings(args)
    _take_gpu_slot(args.device, packable=True)
    spec = RunSpec(args.model, args.seed, settings, Path(args.data), Path(args.out), args.device)
    print(train(spec))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .imagenet import is_index

    run = Path(args.run)
    out = Path(args.out) if args.out else run / METRICS_FILE
    imagenet = is_index(args.data)
    _take_gpu_slot(args.device, packable=not imagenet)  # ImageNet evaluation gets a whole GPU (gpu=1 in its rule)
    if imagenet:  # streamed from the image folder, 10-crop testing
        from .evaluate import evaluate_imagenet

        metrics = evaluate_imagenet(run / MODEL_FILE, Path(args.data), out, args.device, args.workers)
        print(f"{out}: 10-crop error {metrics['test_error']:.4f}, centre crop {metrics['single_crop_error']:.4f}")
        return 0
    from .evaluate import evaluate

    metrics = evaluate(run / MODEL_FILE, Path(args.data), out, args.device)
    print(f"{out}: test error {metrics['test_error']:.4f}, loss {metrics['test_loss']:.4f}")
    return 0


def cmd_index_imagenet(args: argparse.Namespace) -> int:
    from .imagenet import build_index, load_index

    out = build_index(Path(args.path), Path(args.out))
    meta = load_index(out).meta
    print(f"{out}: {meta['num_classes']} classes, {meta['counts']['train']} train / {meta['counts']['val']} val images")
    return 0


def cmd_imagenet_val_layout(args: argparse.Namespace) -> int:
    from .imagenet import layout_val

    placed = layout_val(Path(args.devkit), Path(args.images), Path(args.out))
    print(f"{args.out}: {placed} validation images sorted into class folders")
    return 0


def _distributed_options(args: argparse.Namespace) -> DistributedOptions:
    """The experiment's `distributed` block when --config is given, else the defaults."""
    from .settings import DistributedOptions

    if not args.config:
        return DistributedOptions()
    from .plan import distributed_options, load_plan

    plan = load_plan(args.config)
    if args.experiment not in plan.experiments:
        raise ConfigError(f"experiment {args.experiment!r} is not an enabled experiment of {args.config}")
    return distributed_options(plan.config, args.experiment)


def cmd_train_imagenet(args: argparse.Namespace) -> int:
    from .distributed import DistSpec, train_distributed

    settings = _run_settings(args)
    options = _distributed_options(args)
    spec = DistSpec(
        args.model,
        args.seed,
        settings,
        Path(args.data),
        Path(args.out),
        args.device or options.device,
        options.workers if args.workers is None else args.workers,
        options.sync_bn if args.sync_bn is None else args.sync_bn,
    )
    path = train_distributed(spec)
    if int(os.environ.get("RANK", 0)) == 0:  # one line from the job, not one per rank
        print(path)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from .distributed import launch

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("launch needs the command to run, e.g. `launch --nproc-per-node 2 -- train-imagenet ...`")
    options = _distributed_options(args)
    nodes = args.nodes or options.nodes
    per_node = args.nproc_per_node or options.processes_per_node
    return launch(nodes, per_node, command, args.port, args.agent, options.device)


def cmd_render(args: argparse.Namespace) -> int:
    from .paths import experiment_dir
    from .plan import load_plan
    from .render.report import render_experiment

    plan = load_plan(args.config)
    written = render_experiment(plan, args.experiment, args.out or experiment_dir(args.experiment), args.root)
    print(f"{args.experiment}: wrote {len(written)} files under {args.out or experiment_dir(args.experiment)}")
    return 0


def cmd_responses(args: argparse.Namespace) -> int:
    from .analysis import write_responses

    run = Path(args.run)
    out = Path(args.out) if args.out else run / RESPONSES_FILE
    _take_gpu_slot(args.device, packable=True)
    result = write_responses(run / MODEL_FILE, Path(args.data), out, args.device)
    print(f"{out}: {len(result['layers'])} layers of {result['model']} on {result['images']} images")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .paths import SUMMARY_DIR
    from .plan import load_plan
    from .render.report import render_summary

    plan = load_plan(args.config)
    out = args.out or SUMMARY_DIR
    render_summary(plan, out, args.root, args.experiment or None)
    print(Path(out) / "tables" / "verdict.md")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .stages import experiment_needs, sync_dvc_yaml

    plan = load_plan(args.config, check_data=args.action == "check")
    if args.action == "sync":
        changed = sync_dvc_yaml(plan, args.dvc_yaml)
        print(f"{args.dvc_yaml}: {'updated' if changed else 'up to date'} ({len(plan.runs)} runs)")
    else:
        for name, runs in plan.experiments.items():
            print(f"{name}: {len(runs)} runs: {', '.join(sorted({r.model for r in runs}))}")
            print(f"  needs: {experiment_needs(plan, name)}")
        print(f"config OK: {len(plan.runs)} distinct runs")
    return 0


def _validate_model(name: str) -> None:
    from .catalog import CATALOG

    if name not in CATALOG:
        raise UnknownModelError(f"unknown model {name!r}; `resnet-repro models` lists them")


def add_run_arguments(p: argparse.ArgumentParser, data_help: str, default_schedule: str) -> None:
    """The options naming one training run, shared by `train` and `train-imagenet`."""
    p.add_argument("--model", required=True, help="registered model name (see `resnet-repro models`)")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help=f"run folder ({', '.join(TRAINING_FILES)})")
    p.add_argument("--schedule", help=f"named schedule (default: {default_schedule})")
    p.set_defaults(default_schedule=default_schedule)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a schedule setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="take the schedule, settings (and distributed options) from this config.yaml")
    p.add_argument("--experiment", help="with --config: the experiment defining this run")


def build_parser() -> argparse.ArgumentParser:
    # torch-free: --help stays fast
    from .settings import PAPER_SCHEDULE, RENDEZVOUS_PORT_BASE, RENDEZVOUS_PORT_SPAN, DistributedOptions

    # A machine whose GPUs must not be used (a test cluster's fake GPUs, a node with a broken driver): the jobs there
    # run on the CPU without a change to any stage command.
    default_device = os.environ.get(DEVICE_ENV) or "auto"
    device_help = f"auto (CUDA if present), cpu, cuda, cuda:N (default: ${DEVICE_ENV} or auto)"
    parser = argparse.ArgumentParser(
        prog="resnet-repro",
        description="Reproduce 'Deep Residual Learning for Image Recognition' (He et al., 2015): data, training, "
        "evaluation. The pipeline (Snakefile, dvc.yaml) calls these subcommands.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--family", help="only this family (cifar, imagenet, fc)")
    p.add_argument("--params", action="store_true", help="also build each model and count its parameters")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("fetch", help="download a dataset archive, verified by MD5, atomically")
    p.add_argument("dataset", choices=["cifar10", "cifar100"])
    p.add_argument("--source", help="https://, file:// URL or local path (default: the official URL)")
    p.add_argument("--md5", help="expected MD5 (default: the official archive's)")
    p.add_argument("--out", help="destination file (default: data/raw/<archive name>)")
    p.add_argument("--retries", type=int, default=3, help="retries on transient network errors (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("prepare", help="turn a raw dataset into the compact prepared format")
    p.add_argument("dataset", choices=["cifar10", "cifar100", "digits", "imagefolder"])
    p.add_argument("--raw", help="the fetched archive, or an image folder (folder or .tar/.tar.gz)")
    p.add_argument("--out", required=True, help="prepared folder to write")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one model (resumes a matching checkpoint in --out)")
    add_run_arguments(p, "prepared dataset folder", PAPER_SCHEDULE)
    p.add_argument("--device", default=default_device, help=device_help)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help=f"evaluate a trained run into {METRICS_FILE}")
    p.add_argument("--run", required=True, help=f"run folder holding {MODEL_FILE}")
    p.add_argument("--data", required=True, help="prepared dataset folder it was trained on")
    p.add_argument("--out", help=f"metrics file (default: <run>/{METRICS_FILE})")
    p.add_argument("--device", default=default_device, help=device_help)
    p.add_argument("--workers", type=int, default=4, help="ImageNet: DataLoader workers decoding JPEGs (default 4)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("index-imagenet", help="check a local ImageNet folder and write its index (no copy)")
    p.add_argument("--path", required=True, help="ILSVRC-2012 folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    p.add_argument("--out", required=True, help="index folder to write (meta.json, train.tsv, val.tsv)")
    p.set_defaults(func=cmd_index_imagenet)

    p = sub.add_parser("imagenet-val-layout", help="sort the official flat validation images into val/<wnid>/")
    p.add_argument("--devkit", required=True, help="ILSVRC2012_devkit_t12.tar.gz (meta.mat and the ground truth)")
    p.add_argument("--images", required=True, help="ILSVRC2012_img_val.tar, or the folder it was extracted to")
    p.add_argument("--out", required=True, help="the val/ folder to fill (e.g. /data/imagenet/val)")
    p.set_defaults(func=cmd_imagenet_val_layout)

    p = sub.add_parser(
        "train-imagenet",
        help="train one model from the streaming ImageNet loader; one rank of a torchrun job (see `launch`)",
    )
    add_run_arguments(p, "ImageNet index folder (`resnet-repro index-imagenet`)", "imagenet_paper")
    p.add_argument(
        "--device",
        help="auto (CUDA + NCCL if present, else CPU + gloo), cpu or cuda "
        f"(default: config or {DistributedOptions.device})",
    )
    p.add_argument(
        "--workers", type=int, help=f"DataLoader workers per process (default: config or {DistributedOptions.workers})"
    )
    p.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"SyncBatchNorm (default: config or {'on' if DistributedOptions.sync_bn else 'off'})",
    )
    p.set_defaults(func=cmd_train_imagenet)

    p = sub.add_parser(
        "launch",
        help="run a command data-parallel: torchrun --standalone on one machine, srun + torchrun across SLURM nodes",
    )
    p.add_argument(
        "--nodes", type=int, help=f"torchrun agents, one per node (default: config or {DistributedOptions.nodes})"
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        help=f"processes per node, one per GPU (default: config or {DistributedOptions.processes_per_node})",
    )
    p.add_argument(
        "--port",
        type=int,
        help=f"rendezvous port for several nodes (default {RENDEZVOUS_PORT_BASE} + job id %% {RENDEZVOUS_PORT_SPAN})",
    )
    p.add_argument("--config", help="take nodes and processes from this config.yaml's experiment")
    p.add_argument("--experiment", help="with --config: the experiment")
    p.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)  # one srun task: run its torchrun agent
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the resnet-repro subcommand and its options")
    p.set_defaults(func=cmd_launch)
    p = sub.add_parser("render", help="figures, tables and the verdict of one experiment (from its runs' files)")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--experiment", required=True, help="experiment name in the config (e.g. demo, cifar10_depth)")
    p.add_argument("--out", help="output folder (default: results/<experiment>)")
    p.add_argument("--root", default=".", help="folder the run paths of the config are relative to (default: .)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("responses", help="std of each 3x3 layer's response on the test set (paper Fig. 7)")
    p.add_argument("--run", required=True, help=f"run folder holding {MODEL_FILE}")
    p.add_argument("--data", required=True, help="prepared dataset folder it was trained on")
    p.add_argument("--out", help=f"JSON file to write (default: <run>/{RESPONSES_FILE})")
    p.add_argument("--device", default=default_device, help=device_help)
    p.set_defaults(func=cmd_responses)

    p = sub.add_parser("summary", help="the reproduction verdict of every claim across the experiments of `all`")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--out", help="output folder (default: results/summary)")
    p.add_argument("--root", default=".", help="folder the run paths of the config are relative to (default: .)")
    p.add_argument("--experiment", action="append", help="only these experiments (repeatable; default: `all`)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("pipeline", help="validate config.yaml, or regenerate dvc.yaml from it")
    p.add_argument("action", choices=["check", "sync"])
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--dvc-yaml", default="dvc.yaml")
    p.set_defaults(func=cmd_pipeline)
    return parser


# After the traceback of anything that is not a user error (the project has no public issue tracker to name).
BUG_REPORT = (
    "internal error: please report this as a bug with the traceback above and the output of `resnet-repro --version`"
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ReproError as error:  # the user's to fix: one line (the only exceptions caught as such)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception:  # anything else is a defect: keep the traceback, and say so
        traceback.print_exc()
        print(BUG_REPORT, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
