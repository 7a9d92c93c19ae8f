"""The pipeline's last stages: figures, tables and the reproduction verdict, from the runs' files alone.

Inputs are what training and evaluation write (history.csv, epochs.csv, metrics.json per run, responses.json for
Fig. 7) and the reference numbers in references.yaml; outputs go to results/<experiment>/{figures,tables}/ and
results/summary/. What an experiment renders depends on its name (the paper's and the review's experiments) or,
for any other experiment such as `demo`, on its models. A run that has not happened is drawn as absent, shown as
"not run" in tables and never counts as a reproduced claim.

Module level stays free of torch, matplotlib and pandas: the Snakefile imports `render_stages`/`render_outputs`
on every dry run, and `resnet-repro --help` must stay fast.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .catalog import CATALOG
from .errors import ConfigError, DataError
from .paths import DETAILS_FILE, METRICS_FILE, RESULTS_DIR
from .plan import Plan, Run
from .settings import load_schedules

REFERENCES_FILE = Path(__file__).with_name("references.yaml")
# The file as DVC sees it (a dependency of every render stage), wherever the package is installed.
REPO_REFERENCES = "src/resnet_repro/references.yaml"
SUMMARY_DIR = f"{RESULTS_DIR}/summary"
TABLE_FORMATS = ("csv", "md", "tex", "html")
FIGURE_FORMATS = ("png", "pdf")
REPRODUCED, WITHIN_NOISE, NOT_REPRODUCED, NOT_RUN = "reproduced", "within noise", "not reproduced", "not run"
VERDICTS = (REPRODUCED, WITHIN_NOISE, NOT_REPRODUCED, NOT_RUN)
DASH = "\u2013"  # en dash: an empty cell, a range


# ============================================================================================ paths (one place)
def experiment_dir(experiment: str) -> str:
    return f"{RESULTS_DIR}/{experiment}"


def figure_files(out_dir: str, name: str) -> dict[str, str]:
    return {fmt: f"{out_dir}/figures/{name}.{fmt}" for fmt in FIGURE_FORMATS}


def table_files(out_dir: str, name: str) -> dict[str, str]:
    return {fmt: f"{out_dir}/tables/{name}.{fmt}" for fmt in TABLE_FORMATS}


# Where `responses` writes Fig. 7's data: beside the run's other files (a Snakemake wildcard pattern too).
RESPONSES_PATTERN = f"{RESULTS_DIR}/{{dataset}}/{{model}}/seed{{seed}}/responses.json"


def responses_file(run: Run) -> str:
    return RESPONSES_PATTERN.format(dataset=run.dataset, model=run.model, seed=run.seed)


def stage_name(kind: str, what: str = "") -> str:
    """DVC stage names, also the `params.stage` of the Snakemake rules that run them."""
    return f"{kind}-{what}" if what else kind


# ===================================================================================== what each experiment shows
SHORT = "cifar10_short"  # the paper's CIFAR-10 protocol at a fraction of its length (schedule cifar_short)


@dataclass(frozen=True)
class Artifact:
    name: str  # file stem: figures/<name>.png or tables/<name>.csv
    kind: str  # "figure" or "table"
    caption: str  # workflow/report/<caption>.rst
    label: str  # short title shown in the report


def model_label(name: str) -> str:
    """The papers' spelling of a catalogue name: plain20 -> plain-20, cifar_plain18 -> PlainCNN-18 (the review's
    name), cifar_vgg16_bn -> VGG-16-BN, fc20 -> FC-20."""
    match = re.fullmatch(r"(cifar_)?(plain|resnet|vgg|fc)(\d+)(_bn)?", name)
    if not match:
        return name
    cifar, kind, depth, bn = match.groups()
    if kind == "plain":
        return f"PlainCNN-{depth}" if cifar else f"plain-{depth}"
    if kind == "resnet":
        return f"ResNet-{depth}"
    if kind == "vgg":
        return f"VGG-{depth}" + ("-BN" if bn else "")
    return f"FC-{depth}"


def model_depth(name: str) -> int | None:
    match = re.search(r"(\d+)", name)
    return int(match.group(1)) if match else None


def is_cifar_6n2(name: str) -> bool:
    """The paper's CIFAR nets (6n+2 layers, 16/32/64 channels): those Fig. 6 and Fig. 7 are about."""
    entry = CATALOG.get(name)
    return entry is not None and entry.kind == "resnet" and tuple(entry.args.get("widths", ())) == (16, 32, 64)


def is_residual(name: str) -> bool:
    entry = CATALOG.get(name)
    return entry is not None and entry.kind == "resnet" and entry.args.get("shortcut") != "none"


def is_plain(name: str) -> bool:
    entry = CATALOG.get(name)
    return entry is not None and entry.kind == "resnet" and entry.args.get("shortcut") == "none"


def fig7_models(models: Iterable[str], experiment: str) -> list[str]:
    """The nets of Fig. 7: the paper's 20/56/110 where present, otherwise every 6n+2 net of the experiment."""
    nets = [m for m in dict.fromkeys(models) if is_cifar_6n2(m)]
    paper = [m for m in nets if model_depth(m) in (20, 56, 110)]
    return paper if experiment == "cifar10_depth" and len(paper) >= 2 else nets


def _config_models(plan: Plan, experiment: str) -> list[str]:
    """Every model the experiment names in config.yaml, enabled or not, in config order."""
    entry = plan.config.get("experiments", {}).get(experiment)
    if entry is None:
        raise ConfigError(
            f"unknown experiment {experiment!r}; config.yaml defines {sorted(plan.config['experiments'])}"
        )
    return list(entry.get("models", {}))


def experiment_artifacts(plan: Plan, experiment: str) -> list[Artifact]:
    """What `render` writes for an experiment; fixed by config.yaml alone, so the DAG knows it in advance."""
    _config_models(plan, experiment)  # an unknown experiment is a one-line error here
    enabled = [run.model for run in plan.experiments.get(experiment, [])]
    arts: list[Artifact]
    if experiment == "degradation":
        arts = [Artifact("fig1", "figure", "fig1", "Fig. 1: plain nets, training and test error")]
        arts.append(Artifact("results", "table", "results_table", "Results"))
    elif experiment == "cifar10_depth":
        arts = [Artifact("fig6", "figure", "fig6", "Fig. 6: plain vs ResNet on CIFAR-10")]
        if fig7_models(enabled, experiment):
            arts.append(Artifact("fig7", "figure", "fig7", "Fig. 7: std of layer responses"))
        arts.append(Artifact("table6", "table", "table6", "Table 6: CIFAR-10 test error"))
    elif experiment == "fc_vs_resnet":
        arts = [Artifact("fc_curves", "figure", "fc_curves", "FC-20 / FC-56 / ResNet-18 curves")]
        arts.append(Artifact("fc_table", "table", "fc_table", "The review's FC table"))
    elif experiment == "cifar100":
        arts = [Artifact("cifar100_curves", "figure", "cifar100_curves", "CIFAR-100 error curves")]
        arts.append(Artifact("cifar100_table", "table", "cifar100_table", "CIFAR-100: top-1/top-5 error"))
    elif experiment == "imagenet":
        arts = [
            Artifact("fig4", "figure", "fig4", "Fig. 4: ImageNet training"),
            Artifact("table2", "table", "table2", "Table 2"),
        ]
    elif experiment == SHORT:
        arts = [Artifact("fig6", "figure", "fig6_short", "Plain vs ResNet on CIFAR-10, short schedule (as Fig. 6)")]
        if fig7_models(enabled, experiment):
            arts.append(Artifact("fig7", "figure", "fig7", "Std of layer responses (as Fig. 7)"))
        arts.append(Artifact("results", "table", "short_table", "Results beside the paper's"))
        arts.append(Artifact("runs", "table", "runs_table", "Provenance and wall time of every run"))
    else:
        arts = [Artifact("curves", "figure", "curves", "Training and test error")]
        if fig7_models(enabled, experiment):
            arts.append(Artifact("fig7", "figure", "fig7", "Std of layer responses (as Fig. 7)"))
        arts.append(Artifact("results", "table", "results_table", "Results"))
    arts.append(Artifact("verdict", "table", "verdict", "Reproduction verdict"))
    return arts


def response_runs(plan: Plan, experiment: str) -> list[Run]:
    """The runs whose responses Fig. 7 needs: the first seed of each Fig. 7 net (the paper shows one run)."""
    if not any(a.name == "fig7" for a in experiment_artifacts(plan, experiment)):
        return []
    runs = plan.experiments.get(experiment, [])
    wanted = fig7_models([r.model for r in runs], experiment)
    first: dict[str, Run] = {}
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
    files += [responses_file(run) for run in response_runs(plan, experiment)]
    return list(dict.fromkeys(files))


def summary_experiments(plan: Plan) -> list[str]:
    """The experiments of `all` (disabled ones too: their claims show as "not run")."""
    return list(plan.config.get("all", []))


def summary_outputs() -> list[str]:
    return list(table_files(SUMMARY_DIR, "verdict").values())


def render_stages(plan: Plan) -> dict[str, dict]:
    """DVC stages of the render step (responses, one render per enabled experiment, the summary), with the same
    names and paths the Snakemake rules in workflow/rules/render.smk use."""
    from .shell import command  # the one place where stage commands are quoted

    stages: dict[str, dict] = {}
    for experiment in plan.experiments:
        for run in response_runs(plan, experiment):
            name, out = stage_name("responses", run.key), responses_file(run)
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


# ============================================================================================== reference data
def load_references(path: Path | str = REFERENCES_FILE) -> dict:
    path = Path(path)
    try:
        refs = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{path}: cannot read the reference numbers ({error})") from None
    missing = {"sources", "table6", "table2", "review_fc", "cifar100_reference", "tolerances"} - set(refs or {})
    if missing:
        raise DataError(f"{path}: missing sections {sorted(missing)}")
    return refs


def cite(refs: dict, section: str) -> str:
    entry = refs[section]
    return f"{refs['sources'][entry['source']]['citation']}, {entry['where']}"


# ============================================================================================== run results
@dataclass
class RunResult:
    model: str
    seed: int
    folder: Path
    metrics: dict
    history: dict[str, list[float]] | None  # column -> values; None when history.csv is absent

    def metric(self, name: str) -> float:
        m = self.metrics
        try:
            value = {
                "test_error": lambda: m["test_error"],
                "train_error": lambda: m["train_error"],
                "top5_error": lambda: 1 - m["top5_accuracy"],
                "test_loss": lambda: m["test_loss"],
                "train_loss": lambda: m["train_loss"],
                "test_accuracy": lambda: m["top1_accuracy"],
                "train_accuracy": lambda: 1 - m["train_error"],
                "parameters": lambda: m["parameters"],
            }[name]()
        except KeyError as error:
            raise DataError(f"{self.folder}/metrics.json has no {error.args[0]!r}") from None
        return float(value)

    @property
    def classes(self) -> int:
        return len(self.metrics.get("per_class_accuracy") or {}) or 10

    def sample_size(self, metric: str) -> int:
        """How many images `metric` was measured on (0 when the metrics do not say)."""
        m = self.metrics
        if metric.startswith("train"):
            return int(m.get("train_images") or 0)
        return int(m.get("test_images") or sum(map(sum, m.get("confusion_matrix") or [])))


def _read_csv(path: Path) -> dict[str, list[float]] | None:
    if not path.is_file():
        return None
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        columns: dict[str, list[float]] = {}
        for row in rows:
            for key, value in row.items():
                columns.setdefault(key, []).append(float(value))
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: not a readable history ({error})") from None
    return columns


def load_run(folder: Path | str, model: str = "", seed: int = 0) -> RunResult | None:
    """A finished run (metrics.json present), or None when it has not run. Its metrics are the headline numbers
    and the details beside them (details.json: identity, per-class accuracy, sample sizes, provenance)."""
    folder = Path(folder)
    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        return None
    metrics: dict = {}
    for path in (folder / DETAILS_FILE, metrics_path):
        if path.name == DETAILS_FILE and not path.is_file():
            continue  # evaluated before the details had a file of their own
        try:
            metrics.update(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not readable JSON ({error}); evaluate the run again") from None
    return RunResult(
        model or metrics.get("model", ""),
        int(metrics.get("seed", seed)),
        folder,
        metrics,
        _read_csv(folder / "history.csv"),
    )


@dataclass(frozen=True)
class Stat:
    best: float
    mean: float
    std: float  # sample std (ddof=1) over seeds; 0 for one seed
    n: int


def stat(values: list[float], lower_is_better: bool = True) -> Stat:
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Stat(min(values) if lower_is_better else max(values), mean, std, n)


@dataclass
class ModelRuns:
    model: str
    seeds: list[int]  # what config.yaml asks for
    runs: list[RunResult] = field(default_factory=list)  # what exists

    @property
    def missing(self) -> list[int]:
        have = {r.seed for r in self.runs}
        return [s for s in self.seeds if s not in have]

    @property
    def complete(self) -> bool:
        return bool(self.runs) and not self.missing

    def stat(self, metric: str) -> Stat | None:
        if not self.runs:
            return None
        return stat([r.metric(metric) for r in self.runs], lower_is_better="accuracy" not in metric)


@dataclass
class ExperimentResults:
    name: str
    dataset: str
    enabled: bool
    models: dict[str, ModelRuns]  # enabled models in config order
    responses: dict[str, dict] = field(default_factory=dict)  # model -> responses.json content

    def get(self, model: str) -> ModelRuns:
        """A model's runs; a model the config disables or lacks has none (so it is "not run")."""
        return self.models.get(model) or ModelRuns(model, [0])

    def ran(self) -> list[ModelRuns]:
        return [m for m in self.models.values() if m.runs]


def collect(plan: Plan, experiment: str, root: Path | str = ".") -> ExperimentResults:
    """Load every run of an experiment that exists under `root`."""
    root = Path(root)
    entry = plan.config.get("experiments", {}).get(experiment)
    if entry is None:
        raise ConfigError(
            f"unknown experiment {experiment!r}; config.yaml defines {sorted(plan.config['experiments'])}"
        )
    results = ExperimentResults(experiment, entry.get("dataset", ""), experiment in plan.experiments, {})
    for run in plan.experiments.get(experiment, []):
        group = results.models.setdefault(run.model, ModelRuns(run.model, []))
        group.seeds.append(run.seed)
        loaded = load_run(root / run.folder, run.model, run.seed)
        if loaded is not None:
            group.runs.append(loaded)
    for run in response_runs(plan, experiment):
        path = root / responses_file(run)
        if path.is_file():
            try:
                results.responses[run.model] = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not valid JSON ({error})") from None
    return results


# ============================================================================================== the verdict
@dataclass(frozen=True)
class Verdict:
    experiment: str
    claim: str
    source: str
    evidence: str
    tolerance: str  # the rule the claim was judged by
    verdict: str
    margin: float | None = None  # points, in the claimed direction (ordering claims)
    noise: float | None = None  # points: the margin a claim must exceed to count as reproduced
    seeds: str = ""  # runs behind each side, e.g. "2 vs 2"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


METRIC_WORDS = {
    "train_error": "final training error",
    "test_error": "test error",
    "top5_error": "top-5 error",
    "test_accuracy": "test accuracy",
}


def _not_run(groups: list[ModelRuns]) -> str | None:
    """Why a claim cannot be judged: which runs (or seeds) have not happened; None when all have."""
    parts = []
    for group in groups:
        if not group.runs:
            parts.append(model_label(group.model))
        elif group.missing:
            parts.append(f"{model_label(group.model)} seeds {', '.join(map(str, group.missing))}")
    return f"not run: {'; '.join(parts)}" if parts else None


def _describe(group: ModelRuns, metric: str) -> str:
    s = group.stat(metric)
    assert s is not None
    seeds = f"mean of {s.n} seeds" if s.n > 1 else "1 seed"
    return f"{model_label(group.model)} {_pct(s.mean)} ({seeds})"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper or the review, judged on the runs. Subclasses implement `judge`."""

    text: str
    source: str

    def evaluate(self, results: ExperimentResults, tol: dict) -> Verdict:
        groups = [results.get(m) for m in self.models()]
        missing = _not_run(groups)
        if missing:
            return Verdict(results.name, self.text, self.source, missing, self.tolerance(tol), NOT_RUN)
        outcome = self.judge(groups, tol)
        if isinstance(outcome, Verdict):
            return replace(outcome, experiment=results.name, claim=self.text, source=self.source)
        ok, evidence = outcome
        seeds = " vs ".join(str(len(g.runs)) for g in groups)
        return Verdict(
            results.name,
            self.text,
            self.source,
            evidence,
            self.tolerance(tol),
            REPRODUCED if ok else NOT_REPRODUCED,
            seeds=seeds,
        )

    def models(self) -> list[str]:
        raise NotImplementedError

    def tolerance(self, tol: dict) -> str:
        raise NotImplementedError

    def judge(self, groups: list[ModelRuns], tol: dict) -> tuple[bool, str] | Verdict:
        """(passed, evidence) for a tolerance rule; or a whole Verdict (its claim fields are filled in after)."""
        raise NotImplementedError


def standard_error(group: ModelRuns, metric: str) -> tuple[float, str]:
    """The standard error of a model's mean `metric` (a fraction), and how it was estimated.

    Several seeds: their sample std over sqrt(n). One run: the binomial error sqrt(p(1-p)/N) of the N images it
    was measured on. The per-run spread is never taken below the binomial error, so two seeds that happen to
    agree do not make a difference of a few images look certain."""
    s = group.stat(metric)
    assert s is not None
    images = min(run.sample_size(metric) for run in group.runs)
    binomial = math.sqrt(max(s.mean * (1 - s.mean), 0.0) / images) if images else 0.0
    if s.n > 1:
        return max(s.std, binomial) / math.sqrt(s.n), f"{s.n} seeds"
    return binomial, f"binomial, {images} images" if images else "1 run, no sample size"


@dataclass(frozen=True)
class Worse(Claim):
    """`worse` has a higher `metric` than `better` (means over seeds). Reproduced when the margin exceeds the
    noise of the difference (`noise_sigmas` standard errors, at least `ordering_points`), not reproduced when it
    is beyond that noise the other way, and within noise otherwise."""

    worse: str = ""
    better: str = ""
    metric: str = "test_error"

    def models(self) -> list[str]:
        return [self.worse, self.better]

    def tolerance(self, tol: dict) -> str:
        return (
            f"{METRIC_WORDS.get(self.metric, self.metric)}: |margin| > {tol['noise_sigmas']:g} standard errors of the "
            "difference (seed spread / sqrt(n), or one run's binomial error)"
        )

    def judge(self, groups: list[ModelRuns], tol: dict) -> Verdict:
        worse, better = (g.stat(self.metric) for g in groups)
        assert worse and better
        margin = 100 * (worse.mean - better.mean)
        (se_worse, how_worse), (se_better, how_better) = (standard_error(g, self.metric) for g in groups)
        noise = max(100 * tol["noise_sigmas"] * math.hypot(se_worse, se_better), tol["ordering_points"])
        if margin > noise:
            outcome = REPRODUCED
        elif margin < -noise:
            outcome = NOT_REPRODUCED
        else:
            outcome = WITHIN_NOISE
        evidence = (
            f"{_describe(groups[0], self.metric)} vs {_describe(groups[1], self.metric)}: margin {margin:+.2f} "
            f"points, noise ±{noise:.2f} ({how_worse}; {how_better})"
        )
        seeds = f"{worse.n} vs {better.n}"
        return Verdict("", "", "", evidence, self.tolerance(tol), outcome, round(margin, 4), round(noise, 4), seeds)


@dataclass(frozen=True)
class Monotone(Claim):
    """`metric` falls (direction -1) or rises (+1) along `chain`: each step may go against it by at most the
    slack, and the last differs from the first in the claimed direction."""

    chain: tuple[str, ...] = ()
    metric: str = "test_error"
    direction: int = -1

    def models(self) -> list[str]:
        return list(self.chain)

    def tolerance(self, tol: dict) -> str:
        return f"{METRIC_WORDS.get(self.metric, self.metric)}: each step within {tol['monotone_slack_points']:g} points"

    def judge(self, groups: list[ModelRuns], tol: dict) -> tuple[bool, str]:
        means = [100 * g.stat(self.metric).mean for g in groups]  # type: ignore[union-attr]
        slack = tol["monotone_slack_points"]
        steps_ok = all(self.direction * (b - a) >= -slack for a, b in itertools.pairwise(means))
        ends_ok = self.direction * (means[-1] - means[0]) > 0
        evidence = " → ".join(f"{model_label(g.model)} {m:.2f}%" for g, m in zip(groups, means, strict=True))
        return steps_ok and ends_ok, evidence


@dataclass(frozen=True)
class Near(Claim):
    """Our best (or mean) `metric` of `model` is within `tolerance_key` points of a reference value (in %)."""

    model: str = ""
    metric: str = "test_error"
    reference: float = 0.0
    use: str = "best"  # "best" or "mean" over seeds
    tolerance_key: str = "paper_error_points"

    def models(self) -> list[str]:
        return [self.model]

    def tolerance(self, tol: dict) -> str:
        return f"|ours - reference| <= {tol[self.tolerance_key]:g} points"

    def judge(self, groups: list[ModelRuns], tol: dict) -> tuple[bool, str]:
        s = groups[0].stat(self.metric)
        assert s is not None
        ours = 100 * (s.best if self.use == "best" else s.mean)
        what = f"{self.use} of {s.n}" if s.n > 1 else "1 seed"
        diff = ours - self.reference
        evidence = f"ours {ours:.2f}% ({what}) vs {self.reference:.2f}%: {diff:+.2f} points"
        return abs(diff) <= tol[self.tolerance_key], evidence


@dataclass(frozen=True)
class AtChance(Claim):
    """The model does not learn: test accuracy within the chance tolerance of 1/classes (or, with `above`, it
    learns: accuracy at least `learns_points` above chance)."""

    model: str = ""
    above: bool = False

    def models(self) -> list[str]:
        return [self.model]

    def tolerance(self, tol: dict) -> str:
        if self.above:
            return f"accuracy >= chance + {tol['learns_points']:g} points"
        return f"|accuracy - chance| <= {tol['chance_points']:g} points"

    def judge(self, groups: list[ModelRuns], tol: dict) -> tuple[bool, str]:
        group = groups[0]
        s = group.stat("test_accuracy")
        assert s is not None
        chance = 100 / group.runs[0].classes
        acc = 100 * s.mean
        evidence = f"{model_label(group.model)} test accuracy {acc:.2f}% vs chance {chance:.2f}%"
        ok = acc >= chance + tol["learns_points"] if self.above else abs(acc - chance) <= tol["chance_points"]
        return ok, evidence


PAPER_FIG1, PAPER_FIG6, PAPER_T6, PAPER_T2 = "paper Fig. 1", "paper Fig. 6", "paper Table 6", "paper Table 2"


def _generic_claims(models: list[str]) -> list[Claim]:
    """Claims the paper makes about any plain/residual pair, applied to whatever an experiment trains."""
    plain = sorted((m for m in models if is_plain(m)), key=lambda m: model_depth(m) or 0)
    residual = sorted((m for m in models if is_residual(m)), key=lambda m: model_depth(m) or 0)
    claims: list[Claim] = []
    if len(plain) >= 2:
        a, b = plain[0], plain[-1]
        claims.append(
            Worse(f"{model_label(b)} has higher training error than {model_label(a)}", PAPER_FIG1, b, a, "train_error")
        )
    by_depth = {model_depth(m): m for m in residual}
    for p in plain:
        r = by_depth.get(model_depth(p))
        if r:
            claims.append(
                Worse(
                    f"{model_label(r)} has lower training error than {model_label(p)}", PAPER_FIG6, p, r, "train_error"
                )
            )
    if len(residual) >= 2:
        a, b = residual[0], residual[-1]
        claims.append(Worse(f"{model_label(b)} has lower test error than {model_label(a)}", PAPER_FIG6, a, b))
    return claims


def experiment_claims(experiment: str, models: list[str], refs: dict) -> list[Claim]:
    """The claims judged for an experiment. `models`: every model config.yaml names for it."""
    tol = refs["tolerances"]
    if experiment == "degradation":
        return [
            Worse("plain-56 has higher training error than plain-20", PAPER_FIG1, "plain56", "plain20", "train_error"),
            Worse("plain-56 has higher test error than plain-20", PAPER_FIG1, "plain56", "plain20", "test_error"),
        ]
    if experiment == "cifar10_depth":
        claims: list[Claim] = [
            Monotone(
                "deeper plain nets have higher training error (20 → 56)",
                PAPER_FIG6,
                ("plain20", "plain32", "plain44", "plain56"),
                "train_error",
                +1,
            )
        ]
        for depth in (20, 32, 44, 56):
            claims.append(
                Worse(
                    f"ResNet-{depth} has lower training error than plain-{depth}",
                    PAPER_FIG6,
                    f"plain{depth}",
                    f"resnet{depth}",
                    "train_error",
                )
            )
        claims.append(
            Monotone(
                "deeper ResNets reach lower test error (20 → 110)",
                PAPER_T6,
                ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
            )
        )
        for row in refs["table6"]["rows"]:
            if row.get("model"):
                label = model_label(row["model"])
                claims.append(
                    Near(
                        f"{label} within {tol['paper_error_points']:g} points of the paper's {row['best']:.2f}% (best)",
                        PAPER_T6,
                        row["model"],
                        reference=row["best"],
                    )
                )
                if "mean" in row:
                    claims.append(
                        Near(
                            f"{label} mean within {tol['paper_error_points']:g} points of the paper's "
                            f"{row['mean']:.2f}% (mean)",
                            PAPER_T6,
                            row["model"],
                            reference=row["mean"],
                            use="mean",
                        )
                    )
        claims.append(
            Worse(
                "ResNet-1202 has higher test error than ResNet-110 (overfitting)",
                "paper Sec. 4.2",
                "resnet1202",
                "resnet110",
            )
        )
        return claims
    if experiment == "fc_vs_resnet":
        review = "review FC table"
        return [
            AtChance("FC-56 does not learn (test accuracy at chance)", review, "fc56"),
            AtChance("FC-20 learns (test accuracy above chance)", review, "fc20", above=True),
            Worse("ResNet-18 has lower test error than FC-20", review, "fc20", "cifar_resnet18"),
        ]
    if experiment == "cifar100":
        review = "review CIFAR-100"
        claims = [
            Worse("ResNet-18 has lower top-1 error than PlainCNN-18", review, "cifar_plain18", "cifar_resnet18"),
            Worse("ResNet-34 has lower top-1 error than PlainCNN-34", review, "cifar_plain34", "cifar_resnet34"),
            Worse("ResNet-34 has lower top-1 error than ResNet-18", review, "cifar_resnet18", "cifar_resnet34"),
            Worse(
                "PlainCNN-34 has higher training error than PlainCNN-18",
                review,
                "cifar_plain34",
                "cifar_plain18",
                "train_error",
            ),
        ]
        for row in refs["cifar100_reference"]["rows"]:
            claims.append(
                Near(
                    f"{row['label']} top-1 within {tol['reference_run_points']:g} points of the reference run's "
                    f"{row['top1']:.2f}%",
                    "reference run",
                    row["model"],
                    reference=row["top1"],
                    use="mean",
                    tolerance_key="reference_run_points",
                )
            )
        return claims
    if experiment == SHORT:
        return [
            Worse("plain-56 has higher training error than plain-20", PAPER_FIG1, "plain56", "plain20", "train_error"),
            Worse("plain-56 has higher test error than plain-20", PAPER_FIG1, "plain56", "plain20"),
            Worse("ResNet-56 has lower training error than plain-56", PAPER_FIG6, "plain56", "resnet56", "train_error"),
            Worse("ResNet-56 has lower test error than plain-56", PAPER_FIG6, "plain56", "resnet56"),
            Worse("ResNet-20 has lower training error than plain-20", PAPER_FIG6, "plain20", "resnet20", "train_error"),
            Worse("ResNet-56 has lower test error than ResNet-20", PAPER_T6, "resnet20", "resnet56"),
        ]
    if experiment == "imagenet":
        return [
            Worse("plain-34 has higher top-1 error than plain-18", PAPER_T2, "plain34", "plain18"),
            Worse("ResNet-34 has lower top-1 error than ResNet-18", PAPER_T2, "resnet18", "resnet34"),
            Worse("ResNet-34 has lower top-1 error than plain-34", PAPER_T2, "plain34", "resnet34"),
        ]
    return _generic_claims(models)


def judge_experiment(plan: Plan, results: ExperimentResults, refs: dict) -> list[Verdict]:
    claims = experiment_claims(results.name, _config_models(plan, results.name), refs)
    verdicts = [claim.evaluate(results, refs["tolerances"]) for claim in claims]
    if not results.enabled:
        verdicts = [
            Verdict(
                v.experiment, v.claim, v.source, "not run: experiment disabled in config.yaml", v.tolerance, NOT_RUN
            )
            for v in verdicts
        ]
    return verdicts


# ============================================================================================== tables
@dataclass
class Column:
    header: str
    show: Callable[[dict], str]
    align: str = "r"


@dataclass
class Table:
    name: str
    title: str
    fields: list[str]  # CSV columns: the raw numbers
    columns: list[Column]  # what Markdown/LaTeX/HTML show, formatted
    records: list[dict]
    notes: list[str] = field(default_factory=list)


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}{suffix}"


def _pm(mean: Any, std: Any, n: Any, digits: int = 2) -> str:
    if mean is None:
        return DASH
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n and n > 1 else f"{mean:.{digits}f}"


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(_md_cell(c.header) for c in table.columns) + " |")
    lines.append("|" + "|".join(":---" if c.align == "l" else "---:" for c in table.columns) + "|")
    for record in table.records:
        lines.append("| " + " | ".join(_md_cell(c.show(record)) for c in table.columns) + " |")
    if table.notes:
        lines.append("")
        lines += [f"{note}  " for note in table.notes]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    DASH: "--",
    "→": r"$\to$",
    "\u00d7": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def table_latex(table: Table) -> str:
    """A booktabs table environment (needs \\usepackage{booktabs})."""
    spec = "".join(c.align for c in table.columns)
    lines = [
        "% Generated by `resnet-repro render`; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(table.title)}}}",
        f"\\label{{tab:{table.name.replace('_', '-')}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(c.header) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    for record in table.records:
        lines.append(" & ".join(latex_escape(c.show(record)) for c in table.columns) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    for note in table.notes:
        lines.append(f"\\par\\smallskip{{\\footnotesize {latex_escape(note)}}}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


VERDICT_COLORS = {REPRODUCED: "#1a7f37", WITHIN_NOISE: "#9a6700", NOT_REPRODUCED: "#c62828", NOT_RUN: "#6e7781"}


def table_html(table: Table) -> str:
    """A self-contained HTML page (Snakemake's report shows HTML inline)."""
    head = "".join(f"<th class='{c.align}'>{html.escape(c.header)}</th>" for c in table.columns)
    body = []
    for record in table.records:
        cells = []
        for c in table.columns:
            text = c.show(record)
            style = f" style='color:{VERDICT_COLORS[text]};font-weight:600'" if text in VERDICT_COLORS else ""
            cells.append(f"<td class='{c.align}'{style}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in table.notes)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(table.title)}</title><style>"
        "body{font-family:system-ui,sans-serif;font-size:14px;margin:1em}"
        "table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #ddd}"
        "th{border-bottom:2px solid #333}.l{text-align:left}.r{text-align:right}.c{text-align:center}"
        ".note{color:#555;font-size:12px;margin:4px 0}</style></head><body>"
        f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>"
        + "".join(body)
        + f"</tbody></table>{notes}</body></html>\n"
    )


def write_table(table: Table, out_dir: Path | str) -> list[Path]:
    files = {fmt: Path(p) for fmt, p in table_files(str(out_dir), table.name).items()}
    files["csv"].parent.mkdir(parents=True, exist_ok=True)
    with files["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=table.fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in table.records:
            writer.writerow({k: "" if record.get(k) is None else record.get(k) for k in table.fields})
    files["md"].write_text(table_markdown(table))
    files["tex"].write_text(table_latex(table))
    files["html"].write_text(table_html(table))
    return list(files.values())


def _seeds_note(group: ModelRuns | None) -> str:
    if group is None or not group.runs:
        return NOT_RUN
    if group.missing:
        return f"{len(group.runs)} of {len(group.seeds)} seeds"
    return f"{len(group.runs)}"


def _error_fields(group: ModelRuns | None, metric: str = "test_error", prefix: str = "error") -> dict:
    s = group.stat(metric) if group else None
    if s is None:
        return {f"{prefix}_best": None, f"{prefix}_mean": None, f"{prefix}_std": None, "runs": 0}
    return {
        f"{prefix}_best": _round(100 * s.best),
        f"{prefix}_mean": _round(100 * s.mean),
        f"{prefix}_std": _round(100 * s.std),
        "runs": s.n,
    }


def _params_m(group: ModelRuns | None) -> float | None:
    s = group.stat("parameters") if group and group.runs else None
    return None if s is None else round(s.mean / 1e6, 4)


def results_table(results: ExperimentResults) -> Table:
    """One row per model: layers, parameters, final training error, test error (best, mean ± std), top-5."""
    records = []
    for group in results.models.values():
        record = {"model": group.model, "label": model_label(group.model), "layers": model_depth(group.model)}
        record["params_m"] = _params_m(group)
        train = group.stat("train_error")
        record["train_error_mean"] = _round(100 * train.mean) if train else None
        record.update(_error_fields(group))
        top5 = group.stat("top5_error")
        record["top5_error_mean"] = _round(100 * top5.mean) if top5 else None
        record["seeds"] = _seeds_note(group)
        records.append(record)
    return Table(
        "results",
        f"{results.name}: results on {results.dataset}",
        [
            "model",
            "layers",
            "params_m",
            "train_error_mean",
            "error_best",
            "error_mean",
            "error_std",
            "top5_error_mean",
            "runs",
            "seeds",
        ],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: _fmt(r["params_m"], 3, "M")),
            Column("Train error (%)", lambda r: _fmt(r["train_error_mean"])),
            Column("Test error (%), best", lambda r: _fmt(r["error_best"])),
            Column("mean ± std", lambda r: _pm(r["error_mean"], r["error_std"], r["runs"])),
            Column("Top-5 error (%)", lambda r: _fmt(r["top5_error_mean"])),
            Column("Seeds", lambda r: r["seeds"]),
        ],
        records,
        ["Train error: the last epoch's training error (mean over seeds). Std is over seeds (n-1)."],
    )


def short_table(results: ExperimentResults, refs: dict) -> Table:
    """Our short-schedule results beside the paper's full-schedule numbers for the same nets (Table 6 for the
    ResNets; the paper prints no number for its plain CIFAR nets, only Fig. 6's curves)."""
    paper = {row["model"]: row for row in refs["table6"]["rows"] if row.get("model")}
    records = []
    for group in results.models.values():
        train = group.stat("train_error")
        row = paper.get(group.model, {})
        records.append(
            {
                "model": group.model,
                "label": model_label(group.model),
                "layers": model_depth(group.model),
                "params_m": _params_m(group),
                "train_error_mean": _round(100 * train.mean) if train else None,
                "train_error_std": _round(100 * train.std) if train else None,
                **_error_fields(group),
                "error_paper_best": row.get("best"),
                "seeds": _seeds_note(group),
            }
        )
    iterations = _iterations(results)
    paper_iterations = load_schedules()["cifar_paper"]["iterations"]
    return Table(
        "results",
        f"{results.name}: CIFAR-10 error (%) after {iterations:,} iterations, beside the paper's {paper_iterations:,}"
        if iterations
        else f"{results.name}: CIFAR-10 error (%), not run yet",
        [
            "model",
            "layers",
            "params_m",
            "train_error_mean",
            "train_error_std",
            "error_best",
            "error_mean",
            "error_std",
            "runs",
            "error_paper_best",
            "seeds",
        ],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: _fmt(r["params_m"], 3, "M")),
            Column("Train error, mean ± std", lambda r: _pm(r["train_error_mean"], r["train_error_std"], r["runs"])),
            Column("Test error, mean ± std", lambda r: _pm(r["error_mean"], r["error_std"], r["runs"])),
            Column("best", lambda r: _fmt(r["error_best"])),
            Column("Paper (64k it.)", lambda r: _fmt(r["error_paper_best"])),
            Column("Seeds", lambda r: r["seeds"]),
        ],
        records,
        [
            f"Ours: {iterations:,} iterations, the paper's protocol (SGD 0.9, weight decay 1e-4, batch 128, lr 0.1 "
            f"divided by 10 twice) at 1/{paper_iterations / max(iterations, 1):,.0f} of its length, on the data in "
            f"config.yaml; the paper trained {paper_iterations:,} iterations on the official CIFAR-10, so our errors "
            "are higher.",
            f"Paper: {cite(refs, 'table6')} (best of its runs); it prints no number for the plain nets. "
            "Std is over seeds (n-1); train error is the last full epoch's.",
        ],
    )


def _iterations(results: ExperimentResults) -> int:
    """The iterations the experiment's runs were trained for (the longest history)."""
    return int(
        max(
            (r.history["iteration"][-1] for g in results.models.values() for r in g.runs if r.history),
            default=0,
        )
    )


def runs_table(results: ExperimentResults) -> Table:
    """Provenance of every run: code commit, torch, device and runtime, threads, and wall time (training)."""
    records = []
    for group in results.models.values():
        for run in sorted(group.runs, key=lambda r: r.seed):
            prov = run.metrics.get("provenance") or {}
            history = run.history or {}
            wall = history.get("wall_s", [None])[-1] if history.get("wall_s") else None
            threads = history.get("threads", [None])[-1] if history.get("threads") else None
            records.append(
                {
                    "model": group.model,
                    "label": model_label(group.model),
                    "seed": run.seed,
                    "iterations": int(history["iteration"][-1]) if history.get("iteration") else None,
                    "wall_min": _round(wall / 60, 2) if wall is not None else None,
                    "images_per_s": _round(history["images_per_s"][-1], 1) if history.get("images_per_s") else None,
                    "threads": int(threads) if threads is not None else None,
                    "device": prov.get("train_device"),
                    "runtime": prov.get("train_runtime"),
                    "torch": prov.get("torch_version"),
                    "commit": (prov.get("git_commit") or "")[:12] or None,
                }
            )
    total = math.fsum(r["wall_min"] or 0 for r in records)
    return Table(
        "runs",
        f"{results.name}: provenance and training wall time per run (total {total:.1f} min)",
        ["model", "seed", "iterations", "wall_min", "images_per_s", "threads", "device", "runtime", "torch", "commit"],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Seed", lambda r: str(r["seed"])),
            Column("Iterations", lambda r: _fmt(r["iterations"], 0)),
            Column("Wall time (min)", lambda r: _fmt(r["wall_min"], 1)),
            Column("img/s (last interval)", lambda r: _fmt(r["images_per_s"], 0)),
            Column("Threads", lambda r: _fmt(r["threads"], 0)),
            Column("Device", lambda r: r["device"] or DASH, "l"),
            Column("Runtime", lambda r: r["runtime"] or DASH, "l"),
            Column("torch", lambda r: r["torch"] or DASH, "l"),
            Column("Commit", lambda r: r["commit"] or DASH, "l"),
        ],
        records,
        [
            "Wall time: the trainer's own clock from start to the last evaluation, evaluations and any "
            "compilation included (history.csv, wall_s); data preparation and the evaluate step are not counted."
        ],
    )


def table6(results: ExperimentResults, refs: dict) -> Table:
    """Paper Table 6: the paper's rows (with ours beside the ResNets) and our plain nets."""
    records = []
    for row in refs["table6"]["rows"]:
        model = row.get("model")
        group = results.models.get(model) if model else None
        record = {
            "method": row["method"],
            "layers": row.get("layers"),
            "params_m_paper": row.get("params_m"),
            "error_paper_best": row["best"],
            "error_paper_mean": row.get("mean"),
            "error_paper_std": row.get("std"),
            "params_m_ours": _params_m(group),
            **_error_fields(group),
        }
        if model is None:
            record["status"] = "reported, not run"
        else:
            record["status"] = "ours" if group and group.runs else NOT_RUN
            if group and group.missing and group.runs:
                record["status"] = f"ours, {len(group.runs)} of {len(group.seeds)} seeds"
        records.append(record)
    for group in results.models.values():
        if is_plain(group.model):
            records.append(
                {
                    "method": "plain",
                    "layers": model_depth(group.model),
                    "params_m_paper": None,
                    "error_paper_best": None,
                    "params_m_ours": _params_m(group),
                    **_error_fields(group),
                    "status": "ours (not in the paper's table)" if group.runs else NOT_RUN,
                }
            )

    def paper(r: dict) -> str:
        if r["error_paper_best"] is None:
            return DASH
        text = f"{r['error_paper_best']:.2f}"
        return text + (
            f" ({r['error_paper_mean']:.2f} ± {r['error_paper_std']:.2f})" if r.get("error_paper_mean") else ""
        )

    return Table(
        "table6",
        "Table 6: classification error on the CIFAR-10 test set (%)",
        [
            "method",
            "layers",
            "params_m_paper",
            "params_m_ours",
            "error_paper_best",
            "error_paper_mean",
            "error_paper_std",
            "error_best",
            "error_mean",
            "error_std",
            "runs",
            "status",
        ],
        [
            Column("Method", lambda r: r["method"], "l"),
            Column("Layers", lambda r: _fmt(r["layers"], 0)),
            Column("Params (paper)", lambda r: _fmt(r["params_m_paper"], 2, "M")),
            Column("Params (ours)", lambda r: _fmt(r["params_m_ours"], 2, "M")),
            Column("Error, paper", paper),
            Column("Error, ours best", lambda r: _fmt(r["error_best"])),
            Column("Ours mean ± std", lambda r: _pm(r["error_mean"], r["error_std"], r["runs"])),
            Column("Status", lambda r: r["status"], "l"),
        ],
        records,
        [
            f"Paper: {cite(refs, 'table6')}. Paper's '(mean ± std)' is over 5 runs.",
            "Literature rows are reported in the paper, not run here. Ours: best and mean ± std (n-1) over seeds.",
        ],
    )


def fc_table(results: ExperimentResults, refs: dict) -> Table:
    """The review's FC table: ours (mean over seeds) and the review's, one row each per model."""
    metrics = (
        ("train_loss", "train_loss"),
        ("val_loss", "test_loss"),
        ("train_accuracy", "train_accuracy"),
        ("val_accuracy", "test_accuracy"),
    )
    records = []
    for row in refs["review_fc"]["rows"]:
        group = results.models.get(row["model"])
        ours: dict[str, Any] = {"model": row["model"], "label": row["label"], "source": "ours"}
        for key, metric in metrics:
            s = group.stat(metric) if group else None
            ours[key] = _round(s.mean) if s else None
        ours["runs"] = len(group.runs) if group else 0
        if not ours["runs"]:
            ours["source"] = f"ours: {NOT_RUN}"
        records.append(ours)
        records.append(
            {
                "model": row["model"],
                "label": row["label"],
                "source": "review",
                "runs": None,
                **{key: row[key] for key, _ in metrics},
            }
        )
    return Table(
        "fc_table",
        "FC-20 / FC-56 / ResNet-18 on CIFAR-10: ours beside the review's",
        ["model", "source", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "runs"],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Source", lambda r: r["source"], "l"),
            Column("Train loss", lambda r: _fmt(r["train_loss"], 4)),
            Column("Val loss", lambda r: _fmt(r["val_loss"], 4)),
            Column("Train acc.", lambda r: _fmt(r["train_accuracy"], 4)),
            Column("Val acc.", lambda r: _fmt(r["val_accuracy"], 4)),
        ],
        records,
        [
            f"Review: {cite(refs, 'review_fc')}.",
            "Ours: last epoch's training loss/accuracy; 'val' is our held-out evaluation split (metrics.json "
            "`split`); mean over seeds.",
        ],
    )


def cifar100_table(results: ExperimentResults, refs: dict) -> Table:
    reference = {row["model"]: row for row in refs["cifar100_reference"]["rows"]}
    records = []
    for group in results.models.values():
        ref = reference.get(group.model, {})
        top1, top5 = group.stat("test_error"), group.stat("top5_error")
        records.append(
            {
                "model": group.model,
                "label": model_label(group.model),
                "params_m": _params_m(group),
                "top1_mean": _round(100 * top1.mean) if top1 else None,
                "top1_std": _round(100 * top1.std) if top1 else None,
                "top5_mean": _round(100 * top5.mean) if top5 else None,
                "runs": top1.n if top1 else 0,
                "ref_params_m": ref.get("params_m"),
                "ref_top1": ref.get("top1"),
                "ref_top5": ref.get("top5"),
                "status": _seeds_note(group),
            }
        )
    return Table(
        "cifar100_table",
        "CIFAR-100: top-1 / top-5 error (%), ours beside a published reference run",
        [
            "model",
            "params_m",
            "top1_mean",
            "top1_std",
            "top5_mean",
            "runs",
            "ref_params_m",
            "ref_top1",
            "ref_top5",
            "status",
        ],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: _fmt(r["params_m"], 1, "M")),
            Column("Top-1 err.", lambda r: _pm(r["top1_mean"], r["top1_std"], r["runs"])),
            Column("Top-5 err.", lambda r: _fmt(r["top5_mean"])),
            Column("Ref. params", lambda r: _fmt(r["ref_params_m"], 1, "M")),
            Column("Ref. top-1", lambda r: _fmt(r["ref_top1"])),
            Column("Ref. top-5", lambda r: _fmt(r["ref_top5"])),
            Column("Seeds", lambda r: r["status"], "l"),
        ],
        records,
        [f"Reference run: {cite(refs, 'cifar100_reference')}. PlainCNN nets have no reference run."],
    )


def table2(results: ExperimentResults, refs: dict) -> Table:
    records = []
    for row in refs["table2"]["rows"]:
        group = results.models.get(row["model"])
        s = group.stat("test_error") if group else None
        records.append(
            {
                "model": row["model"],
                "label": row["label"],
                "top1_mean": _round(100 * s.mean) if s else None,
                "runs": s.n if s else 0,
                "paper_top1": row["top1"],
                "status": _seeds_note(group) if results.enabled else NOT_RUN,
            }
        )
    return Table(
        "table2",
        "Table 2: top-1 error on ImageNet validation (%)",
        ["model", "top1_mean", "runs", "paper_top1", "status"],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Ours (10-crop)", lambda r: _fmt(r["top1_mean"])),
            Column("Paper (10-crop)", lambda r: _fmt(r["paper_top1"])),
            Column("Seeds", lambda r: r["status"], "l"),
        ],
        records,
        [f"Paper: {cite(refs, 'table2')}."],
    )


def verdict_table(verdicts: list[Verdict], name: str = "verdict", title: str = "Reproduction verdict") -> Table:
    records = [vars(v) | {"n": i + 1} for i, v in enumerate(verdicts)]
    counts = {k: sum(v.verdict == k for v in verdicts) for k in VERDICTS}
    show_experiment = len({v.experiment for v in verdicts}) > 1
    columns = [Column("Experiment", lambda r: r["experiment"], "l")] if show_experiment else []
    columns += [
        Column("Claim", lambda r: r["claim"], "l"),
        Column("Source", lambda r: r["source"], "l"),
        Column("Evidence (our runs)", lambda r: r["evidence"], "l"),
        Column("Margin (points)", lambda r: _fmt(r["margin"], 2)),
        Column("Noise (points)", lambda r: _fmt(r["noise"], 2)),
        Column("Seeds", lambda r: r["seeds"] or DASH),
        Column("Rule", lambda r: r["tolerance"], "l"),
        Column("Verdict", lambda r: r["verdict"], "l"),
    ]
    return Table(
        name,
        title,
        ["experiment", "claim", "source", "evidence", "margin", "noise", "seeds", "tolerance", "verdict"],
        columns,
        records,
        [
            ", ".join(f"{counts[k]} {k}" for k in VERDICTS) + ".",
            "Ordering claims: reproduced when the margin exceeds the noise, not reproduced when it is beyond the noise "
            "the other way, within noise otherwise (the Rule column says how the noise is estimated).",
            "A claim whose runs (any of their seeds) have not happened is 'not run', never a pass.",
        ],
    )


# ============================================================================================== figures
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # A light box: a legend over a curve stays readable, the curve stays visible.
    "legend.frameon": True,
    "legend.framealpha": 0.8,
    "legend.edgecolor": "none",
    "legend.borderpad": 0.3,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by paper submission systems
}
WIDTH_IN = 6.8  # two or three panels across a page's text width; one panel: half of it
PANEL_HEIGHT_IN = 2.6
TRAIN_STYLE = {"linestyle": "--", "linewidth": 0.9}
TEST_STYLE = {"linestyle": "-", "linewidth": 1.8}


def _pyplot():
    """matplotlib, imported only when a figure is drawn (keeps the CLI and the DAG fast), with Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_colors(models: list[str], by_depth: bool = True) -> dict[str, Any]:
    """One colour per model, the same in every panel of a figure. `by_depth`: plain-n and ResNet-n share the
    colour of depth n (they sit in different panels or differ in line style, as in the paper's figures);
    otherwise every model gets its own."""
    palette = [f"C{i}" for i in range(10)]
    if by_depth:
        depths = sorted({model_depth(m) or 0 for m in models})
        return {m: palette[depths.index(model_depth(m) or 0) % 10] for m in models}
    return {m: palette[i % 10] for i, m in enumerate(models)}


SERIES = {
    # name: (history column, transform, legend word)
    "train_error": ("train_error", lambda v: 100 * v, "training"),
    "test_error": ("test_error", lambda v: 100 * v, "test"),
    "train_loss": ("train_loss", lambda v: v, "training"),
    "test_loss": ("test_loss", lambda v: v, "test"),
    "train_accuracy": ("train_error", lambda v: 100 * (1 - v), "training"),
    "test_accuracy": ("test_error", lambda v: 100 * (1 - v), "test"),
}


def model_curve(
    group: ModelRuns, series: str, x: str
) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """(x, mean, min, max) of one series over the seeds that have a history, on the iterations they share."""
    histories = [r.history for r in group.runs if r.history and r.history.get("iteration")]
    if not histories:
        return None
    column, transform, _ = SERIES[series]
    per_seed = []
    for h in histories:
        per_seed.append({it: transform(v) for it, v in zip(h["iteration"], h[column], strict=True)})
    shared = sorted(set.intersection(*(set(p) for p in per_seed)))
    if not shared:
        return None
    first = histories[0]
    epoch_at = dict(zip(first["iteration"], first.get("epoch", first["iteration"]), strict=True))
    xs = [it if x == "iteration" else epoch_at[it] for it in shared]
    values = [[p[it] for p in per_seed] for it in shared]
    return xs, [math.fsum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _x_axis(results: ExperimentResults, models: list[str], x: str) -> tuple[float, str]:
    """Divisor and label of the x axis: iterations in units of 1e4 as the paper plots them, when runs are that
    long; plain iterations for short runs (the demo); or epochs."""
    if x != "iteration":
        return 1.0, "epochs"
    longest = max(
        (
            r.history["iteration"][-1]
            for m in models
            for r in results.get(m).runs
            if r.history and r.history.get("iteration")
        ),
        default=0,
    )
    return (1e4, "iterations (\u00d710\u2074)") if longest >= 1e4 else (1.0, "iterations")


@dataclass
class Panel:
    title: str
    models: list[str]
    series: tuple[str, ...] = ("train_error", "test_error")


def _upper_limit(curves: list[tuple[list[float], list[float]]]) -> float | None:
    """A y-limit that ignores the first quarter of training, whose near-chance errors would squash the rest
    (the paper's figures clip the same way)."""
    tail = []
    for xs, ys in curves:
        if xs:
            start = xs[0] + 0.25 * (xs[-1] - xs[0])
            tail += [y for x_, y in zip(xs, ys, strict=True) if x_ >= start]
    return max(tail) * 1.15 if tail else None


def _plot_model(ax: Any, group: ModelRuns, series: tuple[str, ...], x: str, scale: float, color: Any) -> list:
    """Draw one model's series (mean line, min-max band over seeds); return the (x, max) pairs drawn."""
    drawn = []
    for name in series:
        curve = model_curve(group, name, x)
        if curve is None:
            continue
        xs, mean, lo, hi = curve
        xs = [v / scale for v in xs]
        style = TRAIN_STYLE if len(series) > 1 and name.startswith("train") else TEST_STYLE
        ax.plot(xs, mean, color=color, **style)
        if len(group.runs) > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)
        drawn.append((xs, hi))
    return drawn


def _label(group: ModelRuns) -> str:
    n = len(group.runs)
    return model_label(group.model) + (f" ({n} seeds)" if n > 1 else "")


def _finish(
    fig: Any, axes: list, two_series: bool, band: bool, absent: list[str], models: tuple[list, list] = ([], [])
) -> None:
    """One legend under the panels: `models` (handles, labels) if given, the line styles, the absent runs."""
    plt = _pyplot()
    handles, labels = list(models[0]), list(models[1])
    if two_series:
        handles += [plt.Line2D([], [], color="0.25", **TRAIN_STYLE), plt.Line2D([], [], color="0.25", **TEST_STYLE)]
        labels += ["training (dashed)", "test (bold)"]
    if band:
        handles.append(plt.matplotlib.patches.Patch(color="0.25", alpha=0.2, linewidth=0))
        labels.append(f"band: min{DASH}max over seeds")
    if absent:
        handles.append(plt.Line2D([], [], color="none"))
        labels.append("not run: " + ", ".join(absent))
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 6))


def draw_curves(
    results: ExperimentResults,
    panels: list[Panel],
    out_base: Path,
    x: str = "iteration",
    ylabel: str = "error (%)",
    by_depth: bool = True,
) -> list[Path]:
    """Error curves, one panel per group of models sharing the y axis; training dashed and test bold when a
    panel shows both, as in the paper's Fig. 4 and Fig. 6."""
    plt = _pyplot()
    every = list(dict.fromkeys(m for p in panels for m in p.models))
    colors = model_colors(every, by_depth)
    scale, xlabel = _x_axis(results, every, x)
    absent = [model_label(m) for m in every if not results.get(m).runs]
    with plt.rc_context(STYLE):
        width = WIDTH_IN if len(panels) > 1 else WIDTH_IN / 2
        fig, grid = plt.subplots(1, len(panels), figsize=(width, PANEL_HEIGHT_IN), sharey=True, squeeze=False)
        axes, points, band = list(grid[0]), [], False
        for ax, panel in zip(axes, panels, strict=True):
            handles, labels = [], []
            for model in panel.models:
                group = results.get(model)
                drawn = _plot_model(ax, group, panel.series, x, scale, colors[model])
                if drawn:
                    points += drawn
                    band |= len(group.runs) > 1
                    handles.append(plt.Line2D([], [], color=colors[model], linewidth=1.8))
                    labels.append(_label(group))
            repeated = ax is not axes[0] and panel.models == panels[0].models  # one legend is enough
            if handles and not repeated:
                ax.legend(handles, labels, loc="best")
            elif not handles:
                ax.text(0.5, 0.5, "not run yet", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_title(panel.title)
            ax.set_xlabel(xlabel)
            ax.set_xlim(left=0)
        axes[0].set_ylabel(ylabel)
        limit = _upper_limit(points)
        axes[0].set_ylim(0, min(100.0, limit) if limit else 100.0)
        _finish(fig, axes, any(len(p.series) > 1 for p in panels), band, absent)
        return _save(fig, out_base)


def draw_loss_accuracy(results: ExperimentResults, models: list[str], out_base: Path) -> list[Path]:
    """The review's curves: loss (left) and accuracy (right) per epoch, training dashed and test bold."""
    plt = _pyplot()
    colors = model_colors(models, by_depth=False)
    absent = [model_label(m) for m in models if not results.get(m).runs]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, PANEL_HEIGHT_IN))
        band = False
        for ax, kind, ylabel in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "accuracy", "accuracy (%)")):
            handles, labels = [], []
            for model in models:
                group = results.get(model)
                if _plot_model(ax, group, (f"train_{kind}", f"test_{kind}"), "epoch", 1.0, colors[model]):
                    band |= len(group.runs) > 1
                    handles.append(plt.Line2D([], [], color=colors[model], linewidth=1.8))
                    labels.append(_label(group))
            if handles:
                ax.legend(handles, labels, loc="center right")
            else:
                ax.text(0.5, 0.5, "not run yet", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_xlabel("epochs")
            ax.set_ylabel(ylabel)
            ax.set_title(kind)
            ax.set_xlim(left=0)
            if kind == "accuracy":
                ax.set_ylim(0, 100)
            else:
                ax.set_ylim(bottom=0)
        _finish(fig, list(axes), True, band, absent)
        return _save(fig, out_base)


def draw_responses(results: ExperimentResults, models: list[str], out_base: Path) -> list[Path]:
    """Paper Fig. 7: std of each 3x3 layer's response (after BN, before ReLU/addition), by layer index (left)
    and sorted by magnitude (right). Plain nets dashed, ResNets solid, one colour per depth."""
    plt = _pyplot()
    colors = model_colors(models)
    absent = [model_label(m) for m in models if not results.responses.get(m)]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, PANEL_HEIGHT_IN), sharey=True)
        for model in models:
            data = results.responses.get(model)
            if not data:
                continue
            stds = [layer["std"] for layer in data["layers"]]
            index = list(range(1, len(stds) + 1))
            style = {"color": colors[model], "linewidth": 1.3, "linestyle": "-" if is_residual(model) else "--"}
            axes[0].plot(index, stds, label=model_label(model), **style)
            axes[1].plot(index, sorted(stds, reverse=True), label=model_label(model), **style)
        axes[0].set_title("ordered by layer")
        axes[1].set_title("sorted by magnitude")
        axes[0].set_xlabel("layer index")
        axes[1].set_xlabel("index (sorted)")
        axes[0].set_ylabel("std of response")
        axes[0].set_ylim(bottom=0)
        for ax in axes:
            ax.xaxis.set_major_locator(plt.matplotlib.ticker.MaxNLocator(integer=True))
        if len(absent) == len(models):
            axes[0].text(0.5, 0.5, "not run yet", transform=axes[0].transAxes, ha="center", color="0.5")
        _finish(fig, list(axes), False, False, absent, axes[0].get_legend_handles_labels())
        return _save(fig, out_base)


def _save(fig: Any, out_base: Path) -> list[Path]:
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FIGURE_FORMATS:
        path = out_base.with_suffix(f".{fmt}")
        # No timestamps in the files: rerendering the same data gives the same bytes.
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(path, dpi=200, metadata=metadata)
        paths.append(path)
    _pyplot().close(fig)
    return paths


# ============================================================================================== rendering
def _present(models: Iterable[str], wanted: Iterable[str]) -> list[str]:
    models = list(models)
    return [m for m in wanted if m in models]


def render_experiment(
    plan: Plan, experiment: str, out_dir: Path | str | None = None, root: Path | str = ".", refs: dict | None = None
) -> list[Path]:
    """Write every figure and table of one experiment; return the files written."""
    refs = refs or load_references()
    out = Path(out_dir or experiment_dir(experiment))
    results = collect(plan, experiment, root)
    models = list(results.models)
    written: list[Path] = []
    figures = out / "figures"
    for art in experiment_artifacts(plan, experiment):
        base = figures / art.name
        if art.name == "fig1":
            pair = _present(models, ["plain20", "plain56"]) or models
            written += draw_curves(
                results,
                [Panel("training error", pair, ("train_error",)), Panel("test error", pair, ("test_error",))],
                base,
            )
        elif art.name in ("fig6", "curves", "fig4"):
            plain = [m for m in models if is_plain(m)]
            residual = [m for m in models if is_residual(m)]
            others = [m for m in models if m not in plain and m not in residual]
            if art.name == "fig6":
                residual = [m for m in residual if m != "resnet1202"]
            panels = []
            if plain:
                panels.append(Panel("plain", plain))
            if residual:
                panels.append(Panel("ResNet", residual))
            if others:
                panels.append(Panel("other nets", others))
            if art.name == "fig6" and "resnet1202" in models:
                panels.append(Panel("ResNet-110 vs ResNet-1202", _present(models, ["resnet110", "resnet1202"])))
            if not panels:
                panels = [Panel("no runs", [])]
            x = "iteration" if results.dataset != "cifar100" else "epoch"
            written += draw_curves(results, panels, base, x=x)
        elif art.name == "cifar100_curves":
            written += draw_curves(
                results,
                [
                    Panel("training error (top-1)", models, ("train_error",)),
                    Panel("test error (top-1)", models, ("test_error",)),
                ],
                base,
                x="epoch",
                by_depth=False,
            )
        elif art.name == "fc_curves":
            written += draw_loss_accuracy(results, models, base)
        elif art.name == "fig7":
            written += draw_responses(results, [r.model for r in response_runs(plan, experiment)], base)
        elif art.name == "table6":
            written += write_table(table6(results, refs), out)
        elif art.name == "fc_table":
            written += write_table(fc_table(results, refs), out)
        elif art.name == "cifar100_table":
            written += write_table(cifar100_table(results, refs), out)
        elif art.name == "table2":
            written += write_table(table2(results, refs), out)
        elif art.name == "results":
            table = short_table(results, refs) if experiment == SHORT else results_table(results)
            written += write_table(table, out)
        elif art.name == "runs":
            written += write_table(runs_table(results), out)
        elif art.name == "verdict":
            verdicts = judge_experiment(plan, results, refs)
            written += write_table(verdict_table(verdicts, title=f"Reproduction verdict: {experiment}"), out)
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
    return write_table(verdict_table(verdicts, title="Reproduction verdict: every claim"), out_dir)
