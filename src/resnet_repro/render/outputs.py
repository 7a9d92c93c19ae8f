"""The DAG's view of rendering: which files each experiment renders, the render stages, the report's items.

Fixed by config.yaml and the registry alone, so Snakemake and DVC know every output before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..paths import SUMMARY_DIR, experiment_dir, figure_files, table_files
from ..plan import Plan
from ..runspec import RunSpec
from .experiments import VERDICT, Artifact, experiment_entry
from .references import REPO_REFERENCES
from .results import config_models


def stage_name(kind: str, what: str = "") -> str:
    """DVC stage names, also the `params.stage` of the Snakemake rules that run them."""
    return f"{kind}-{what}" if what else kind


def experiment_artifacts(plan: Plan, experiment: str) -> list[Artifact]:
    """What `render` writes for an experiment; fixed by config.yaml alone, so the DAG knows it in advance."""
    config_models(plan, experiment)  # an unknown experiment is a one-line error here
    enabled = [run.model for run in plan.experiments.get(experiment, [])]
    shown = [a for a in experiment_entry(experiment).artifacts if a.responses is None or a.responses(enabled)]
    return [*shown, VERDICT]


def response_runs(plan: Plan, experiment: str) -> list[RunSpec]:
    """The runs whose responses Fig. 7 needs: the first seed of each Fig. 7 net (the paper shows one run)."""
    runs = plan.experiments.get(experiment, [])
    models = [r.model for r in runs]
    wanted: list[str] = []
    for art in experiment_artifacts(plan, experiment):
        if art.responses is not None:
            wanted += [m for m in art.responses(models) if m not in wanted]
    first: dict[str, RunSpec] = {}
    for run in runs:
        if run.model in wanted and (run.model not in first or run.seed < first[run.model].seed):
            first[run.model] = run
    return [first[m] for m in wanted if m in first]


def render_outputs(plan: Plan, experiment: str, out_dir: str | None = None) -> dict[str, list[str]]:
    """Artifact name -> its files, for one experiment (the render stage's outs)."""
    out_dir = out_dir or experiment_dir(experiment)
    outputs = {}
    for art in experiment_artifacts(plan, experiment):
        files = figure_files(out_dir, art.name) if art.kind == "figure" else table_files(out_dir, art.name)
        outputs[art.name] = list(files.values())
    return outputs


def render_inputs(plan: Plan, experiment: str) -> list[str]:
    files = [REPO_REFERENCES]
    for run in plan.experiments.get(experiment, []):
        files += [run.metrics, run.details, run.files()["history"], run.files()["epochs"]]
    files += [run.responses for run in response_runs(plan, experiment)]
    return list(dict.fromkeys(files))


def summary_experiments(plan: Plan) -> list[str]:
    """The experiments of `all` (disabled ones too: their claims show as "not run")."""
    return list(plan.config.get("all", []))


def summary_outputs() -> list[str]:
    return list(table_files(SUMMARY_DIR, "verdict").values())


def render_stages(plan: Plan) -> dict[str, dict]:
    """DVC stages of the render step (responses, one render per enabled experiment, the summary), with the same
    names and paths the Snakemake rules in workflow/rules/render.smk use."""
    from ..shell import command  # the one place where stage commands are quoted

    stages: dict[str, dict] = {}
    for experiment in plan.experiments:
        for run in response_runs(plan, experiment):
            name, out = stage_name("responses", run.key), run.responses
            stages.setdefault(
                name,
                {
                    "cmd": command(
                        "resnet-repro", "responses", "--run", run.folder, "--data", run.prepared, "--out", out
                    ),
                    "deps": [run.files()["model"], run.prepared],
                    "outs": [out],
                },
            )
    for experiment in plan.experiments:
        out = experiment_dir(experiment)
        stages[stage_name("render", experiment)] = {
            "cmd": command(
                "resnet-repro", "render", "--config", "config.yaml", "--experiment", experiment, "--out", out
            ),
            "deps": render_inputs(plan, experiment),
            "outs": flatten(render_outputs(plan, experiment)),
        }
    deps = [REPO_REFERENCES]
    for experiment in summary_experiments(plan):
        deps += [path for run in plan.experiments.get(experiment, []) for path in (run.metrics, run.details)]
    stages[stage_name("summary")] = {
        "cmd": command("resnet-repro", "summary", "--config", "config.yaml", "--out", SUMMARY_DIR),
        "deps": list(dict.fromkeys(deps)),
        "outs": summary_outputs(),
    }
    return stages


def final_targets(plan: Plan, experiments: list[str], summary: bool = True) -> list[str]:
    """Every rendered file of the named enabled experiments (and the summary verdict): the DAG's end points."""
    files = [f for name in experiments if name in plan.experiments for f in flatten(render_outputs(plan, name))]
    return files + (summary_outputs() if summary else [])


def flatten(outputs: dict[str, list[str]]) -> list[str]:
    return [f for files in outputs.values() for f in files]


@dataclass(frozen=True)
class ReportItem:
    path: str
    caption: str  # stem of workflow/report/<caption>.rst
    category: str
    subcategory: str
    label: str


def report_items(plan: Plan, experiments: Iterable[str] | None = None) -> list[ReportItem]:
    """The files Snakemake's report shows (PNG figures, HTML tables), with caption, category and label."""
    items = []
    for experiment in experiments if experiments is not None else plan.experiments:
        outputs = render_outputs(plan, experiment)
        for art in experiment_artifacts(plan, experiment):
            fmt = "png" if art.kind == "figure" else "html"
            path = next(f for f in outputs[art.name] if f.endswith(f".{fmt}"))
            items.append(
                ReportItem(path, art.caption, experiment, "Figures" if art.kind == "figure" else "Tables", art.label)
            )
    return items


def summary_report_items() -> list[ReportItem]:
    path = table_files(SUMMARY_DIR, "verdict")["html"]
    return [ReportItem(path, "summary", "Summary", "Tables", "Reproduction verdict: every claim")]
