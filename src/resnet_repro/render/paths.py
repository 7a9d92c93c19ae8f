"""Where rendered files and Fig. 7's responses live, and the render stages' names: the one place for paths."""

from __future__ import annotations

from ..pipeline import RESULTS_DIR, Run

SUMMARY_DIR = f"{RESULTS_DIR}/summary"
TABLE_FORMATS = ("csv", "md", "tex", "html")
FIGURE_FORMATS = ("png", "pdf")
# Where `responses` writes Fig. 7's data: beside the run's other files (a Snakemake wildcard pattern too).
RESPONSES_PATTERN = f"{RESULTS_DIR}/{{dataset}}/{{model}}/seed{{seed}}/responses.json"


def experiment_dir(experiment: str) -> str:
    return f"{RESULTS_DIR}/{experiment}"


def figure_files(out_dir: str, name: str) -> dict[str, str]:
    return {fmt: f"{out_dir}/figures/{name}.{fmt}" for fmt in FIGURE_FORMATS}


def table_files(out_dir: str, name: str) -> dict[str, str]:
    return {fmt: f"{out_dir}/tables/{name}.{fmt}" for fmt in TABLE_FORMATS}


def responses_file(run: Run) -> str:
    return RESPONSES_PATTERN.format(dataset=run.dataset, model=run.model, seed=run.seed)


def stage_name(kind: str, what: str = "") -> str:
    """DVC stage names, also the `params.stage` of the Snakemake rules that run them."""
    return f"{kind}-{what}" if what else kind
