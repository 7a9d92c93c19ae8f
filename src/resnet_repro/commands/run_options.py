"""The options naming one training run (`train`, `train-imagenet`): a settings.json written by `resnet-repro plan`,
or a model with a schedule, overrides and a seed; checked before anything heavy starts."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import yaml

from ..errors import ConfigError, UnknownModelError
from ..paths import TRAINING_FILES
from ..runspec import RunSpec, read_spec
from ..settings import DistributedOptions, resolve_settings


def add_run_arguments(parser: argparse.ArgumentParser, data_help: str, default_schedule: str) -> None:
    """The options naming one training run, shared by `train` and `train-imagenet`: a settings.json written by
    `resnet-repro plan` (what the pipeline's stages use), or the model with a schedule and overrides."""
    parser.add_argument("--settings", help="the run's settings.json (written by `resnet-repro plan`)")
    parser.add_argument("--model", help="registered model name (see `resnet-repro models`); not with --settings")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, help=f"run folder ({', '.join(TRAINING_FILES)})")
    parser.add_argument("--schedule", help=f"named schedule (default: {default_schedule})")
    parser.set_defaults(default_schedule=default_schedule)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a schedule setting")
    parser.add_argument("--seed", type=int, help="the run's seed (default 0)")


def parse_overrides(pairs: list[str]) -> dict:
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


def run_spec(args: argparse.Namespace, dataset: str, distributed: DistributedOptions | None = None) -> RunSpec:
    """The run the options name, checked before anything heavy starts: the --settings file as written, or --model
    with --schedule (default: the subcommand's), --set and --seed on `dataset` (and `distributed`)."""
    if args.settings:
        named = {"--model": args.model, "--schedule": args.schedule, "--seed": args.seed, "--set": args.set or None}
        given = [flag for flag, value in named.items() if value is not None]
        if given:
            raise ConfigError(f"--settings names the whole run; drop {', '.join(given)}")
        spec = read_spec(args.settings)
    elif not args.model:
        raise ConfigError("name the run: --settings FILE (from `resnet-repro plan`) or --model NAME")
    else:
        settings = resolve_settings(args.schedule or args.default_schedule, parse_overrides(args.set))
        schedule = args.schedule or args.default_schedule
        spec = RunSpec(dataset, args.model, args.seed or 0, settings, distributed, schedule)
    check_model(spec.model)
    return spec


def check_model(name: str) -> None:
    from ..catalog import CATALOG

    if name not in CATALOG:
        raise UnknownModelError(f"unknown model {name!r}; `resnet-repro models` lists them")


def dataset_name(data: str) -> str:
    """A run's dataset when it is named by its prepared folder alone (runs outside the pipeline)."""
    return Path(data).name or "data"
