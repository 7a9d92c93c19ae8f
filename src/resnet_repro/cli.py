"""`resnet-repro`: the dispatcher of its subcommands (each in resnet_repro.commands, imported only when it runs).

Every user error (bad option, unknown model, missing or corrupt file, full disk) is one line on stderr and a
non-zero exit status, never a traceback: those are the project's own error classes (errors.py). Anything else is a
bug and keeps its traceback, followed by a line asking to report it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable
from types import ModuleType

from . import __version__
from .errors import ReproError

# Each subcommand and its one-line help; its options and code live in resnet_repro.commands.<name> (dashes as _).
SUBCOMMANDS = {
    "models": "list the registered models",
    "fetch": "download a dataset archive, verified by MD5, atomically",
    "prepare": "turn a raw dataset into the compact prepared format",
    "plan": "resolve every run of config.yaml into its settings.json (what its training job reads)",
    "train": "train one model (resumes a matching checkpoint in --out)",
    "evaluate": "evaluate a trained run into metrics.json and details.json",
    "index-imagenet": "check a local ImageNet folder and write its index (no copy)",
    "imagenet-val-layout": "sort the official flat validation images into val/<wnid>/",
    "train-imagenet": "train one model from the streaming ImageNet loader; one rank of a torchrun job (see `launch`)",
    "evaluate-imagenet": "10-crop evaluation of a trained ImageNet run into metrics.json and details.json",
    "launch": "run a command data-parallel: torchrun --standalone on one machine, srun + torchrun across SLURM nodes",
    "render": "figures, tables and the verdict of one experiment (from its runs' files)",
    "responses": "std of each 3x3 layer's response on the test set (paper Fig. 7)",
    "summary": "the reproduction verdict of every claim across the experiments of `all`",
    "pipeline": "validate config.yaml, or regenerate dvc.yaml from it",
}


def command_module(subcommand: str) -> str:
    """The module holding `subcommand`'s options and code."""
    return f"{__package__}.commands.{subcommand.replace('-', '_')}"


def _load(subcommand: str) -> ModuleType:
    return importlib.import_module(command_module(subcommand))


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; the options only of those in `load` (default: all), so that running one
    imports no other subcommand's module."""
    chosen = set(SUBCOMMANDS if load is None else load)
    parser = argparse.ArgumentParser(
        prog="resnet-repro",
        description="Reproduce 'Deep Residual Learning for Image Recognition' (He et al., 2015): data, training, "
        "evaluation. The pipeline (Snakefile, dvc.yaml) calls these subcommands.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=summary, description=summary)
        if name in chosen:
            module = _load(name)
            module.add_arguments(subparser)
            subparser.set_defaults(func=module.run)
    return parser


def _subcommand(argv: list[str]) -> list[str]:
    """The subcommand `argv` names (its first word that is not an option), if any."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return [first] if first in SUBCOMMANDS else []


# After the traceback of anything that is not a user error (the project has no public issue tracker to name).
BUG_REPORT = (
    "internal error: please report this as a bug with the traceback above and the output of `resnet-repro --version`"
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_subcommand(argv)).parse_args(argv)
    try:
        return args.func(args)
    except ReproError as error:  # the user's to fix: one line (the only exceptions caught as such)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception:  # anything else is a defect: keep the traceback, and say so
        import traceback

        traceback.print_exc()
        print(BUG_REPORT, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
