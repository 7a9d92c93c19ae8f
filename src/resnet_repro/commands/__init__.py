"""The `resnet-repro` subcommands, one module each: `add_arguments(parser)` and `run(args) -> exit status`.

resnet_repro.cli imports only the module of the subcommand it runs, so one subcommand's code and imports are never
part of another's: a pipeline stage depends on exactly the modules its command runs (resnet_repro.sources).
"""
