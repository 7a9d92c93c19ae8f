"""Where the pipeline's files live: each path pattern of data, runs and rendered results, defined once.

The patterns keep Snakemake's wildcards (`{dataset}`, `{model}`, `{seed}`, `{archive}`): the rules use them as
they are, and the DVC stages and the command line fill them in. Nothing here imports anything but the standard
library.
"""

from __future__ import annotations

DATA_DIR = "data"
RESULTS_DIR = "results"
RAW_ARCHIVE = f"{DATA_DIR}/raw/{{archive}}"
PREPARED_DIR = f"{DATA_DIR}/prepared/{{dataset}}"
PREPARED_FILES = ("meta.json", "train.npz", "test.npz")  # what `prepare` writes (an index writes INDEX_FILES)
INDEX_FILES = ("meta.json", "train.tsv", "val.tsv")  # what `index-imagenet` writes
RUN_DIR = f"{RESULTS_DIR}/{{dataset}}/{{model}}/seed{{seed}}"
SETTINGS_FILE = "settings.json"  # the run as the plan resolved it: what its training job reads (resnet_repro.runspec)
MODEL_FILE = "model.pt"  # a training job's final weights
HISTORY_FILE = "history.csv"  # one row per evaluation
EPOCHS_FILE = "epochs.csv"  # one row per completed epoch
TRAINING_FILES = (MODEL_FILE, HISTORY_FILE, EPOCHS_FILE)  # what a training job writes
CHECKPOINT_FILE = "checkpoint.pt"  # the resumable state while a run trains (removed when it finishes)
METRICS_FILE = "metrics.json"  # what evaluation writes: the headline numbers (DVC metrics)
DETAILS_FILE = "details.json"  # and beside them the rest: identity, per-class accuracy, provenance
RESPONSES_FILE = "responses.json"  # Fig. 7's layer responses
SUMMARY_DIR = f"{RESULTS_DIR}/summary"  # the verdict over all experiments
TABLE_FORMATS = ("csv", "md", "tex", "html")
FIGURE_FORMATS = ("png", "pdf")


def raw_archive(archive: str = "{archive}") -> str:
    """Where `fetch` puts an official archive (by its file name)."""
    return RAW_ARCHIVE.format(archive=archive)


def prepared_dir(dataset: str = "{dataset}") -> str:
    """Where `prepare` (or `index-imagenet`) writes a dataset."""
    return PREPARED_DIR.format(dataset=dataset)


def run_dir(dataset: str = "{dataset}", model: str = "{model}", seed: int | str = "{seed}") -> str:
    """A run's folder; with no arguments, the wildcard pattern."""
    return RUN_DIR.format(dataset=dataset, model=model, seed=seed)


def experiment_dir(experiment: str) -> str:
    """Where an experiment's figures and tables go."""
    return f"{RESULTS_DIR}/{experiment}"


def figure_files(out_dir: str, name: str) -> dict[str, str]:
    """A figure's files, by format."""
    return {fmt: f"{out_dir}/figures/{name}.{fmt}" for fmt in FIGURE_FORMATS}


def table_files(out_dir: str, name: str) -> dict[str, str]:
    """A table's files, by format."""
    return {fmt: f"{out_dir}/tables/{name}.{fmt}" for fmt in TABLE_FORMATS}


def run_file(name: str, dataset: str = "{dataset}", model: str = "{model}", seed: int | str = "{seed}") -> str:
    """A file of a run's folder; with no run given, the wildcard pattern."""
    return f"{run_dir(dataset, model, seed)}/{name}"
