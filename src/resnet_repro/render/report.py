"""Rendering to files: every figure and table of one experiment, and the summary verdict across experiments."""

from __future__ import annotations

from pathlib import Path

from ..paths import SUMMARY_DIR, experiment_dir
from ..plan import Plan
from .claims import Verdict
from .experiments import Rendering, judge_experiment
from .formats import write_table
from .outputs import experiment_artifacts, response_runs, summary_experiments
from .references import load_references
from .results import collect
from .tables import verdict_table


def render_experiment(
    plan: Plan, experiment: str, out_dir: Path | str | None = None, root: Path | str = ".", refs: dict | None = None
) -> list[Path]:
    """Write every figure and table of one experiment; return the files written."""
    refs = refs or load_references()
    out = Path(out_dir or experiment_dir(experiment))
    results = collect(plan, experiment, root, response_runs(plan, experiment))
    rendering = Rendering(plan, results, refs, out)
    written: list[Path] = []
    for art in experiment_artifacts(plan, experiment):
        written += art.write(rendering)
    return written


def render_summary(
    plan: Plan,
    out_dir: Path | str = SUMMARY_DIR,
    root: Path | str = ".",
    experiments: list[str] | None = None,
    refs: dict | None = None,
) -> list[Path]:
    """The verdict of every claim across the experiments of `all` (disabled ones show as "not run")."""
    refs = refs or load_references()
    verdicts: list[Verdict] = []
    for experiment in experiments if experiments is not None else summary_experiments(plan):
        verdicts += judge_experiment(plan, collect(plan, experiment, root), refs)
    holm = refs["tolerances"]["holm"]
    # An overview: each experiment's own verdict table has the evidence and rule of every claim.
    title = "Reproduction verdict: every claim (evidence and rules: each experiment's verdict table)"
    return write_table(verdict_table(verdicts, holm, title=title, brief=True), out_dir)
