"""`resnet-repro launch`: run a command data-parallel: torchrun on one machine, srun + torchrun across SLURM nodes."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..settings import RENDEZVOUS_PORT_BASE, RENDEZVOUS_PORT_SPAN, DistributedOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes",
        type=int,
        help=f"torchrun agents, one per node (default: the settings' or {DistributedOptions.nodes})",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        help=f"processes per node, one per GPU (default: the settings' or {DistributedOptions.processes_per_node})",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"rendezvous port for several nodes (default {RENDEZVOUS_PORT_BASE} + job id %% {RENDEZVOUS_PORT_SPAN})",
    )
    parser.add_argument("--settings", help="take nodes, processes and device from this run's settings.json")
    parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)  # one srun task: run its torchrun agent
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the resnet-repro subcommand and its options")


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("launch needs the command to run, e.g. `launch --nproc-per-node 2 -- train-imagenet ...`")
    layout = DistributedOptions()
    if args.settings:
        from ..runspec import read_spec

        layout = read_spec(args.settings).distributed or layout
    from ..launch import launch

    nodes, per_node = args.nodes or layout.nodes, args.nproc_per_node or layout.processes_per_node
    return launch(nodes, per_node, command, args.port, args.agent, layout.device)
