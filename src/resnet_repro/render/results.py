"""Loading finished runs (metrics.json, history.csv, responses.json) into per-model groups with their statistics."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from ..paths import DETAILS_FILE, HISTORY_FILE, METRICS_FILE
from ..plan import Plan
from ..runspec import RunSpec


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
            raise DataError(f"{self.folder}/{METRICS_FILE} has no {error.args[0]!r}") from None
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing beside {METRICS_FILE}; evaluate the run again") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); evaluate the run again") from None


def load_run(folder: Path | str, model: str = "", seed: int = 0) -> RunResult | None:
    """A finished run (metrics.json present), or None when it has not run. Its metrics are the headline numbers
    and the details beside them (details.json: identity, per-class accuracy, sample sizes, provenance), which
    evaluation writes first: metrics without their details are not a result."""
    folder = Path(folder)
    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        return None
    headline, details = (_read_json(path) for path in (metrics_path, folder / DETAILS_FILE))
    metrics = {**details, **headline}
    return RunResult(
        model or metrics.get("model", ""),
        int(metrics.get("seed", seed)),
        folder,
        metrics,
        _read_csv(folder / HISTORY_FILE),
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


def config_models(plan: Plan, experiment: str) -> list[str]:
    """Every model the experiment names in config.yaml, enabled or not, in config order."""
    entry = plan.config.get("experiments", {}).get(experiment)
    if entry is None:
        raise ConfigError(
            f"unknown experiment {experiment!r}; config.yaml defines {sorted(plan.config['experiments'])}"
        )
    return list(entry.get("models", {}))


def collect(
    plan: Plan, experiment: str, root: Path | str = ".", responses: Iterable[RunSpec] = ()
) -> ExperimentResults:
    """Load every run of an experiment that exists under `root`, and the layer responses of the `responses` runs
    (`outputs.response_runs` says which an experiment draws)."""
    root = Path(root)
    config_models(plan, experiment)  # an unknown experiment is a one-line error
    entry = plan.config["experiments"][experiment]
    results = ExperimentResults(experiment, entry.get("dataset", ""), experiment in plan.experiments, {})
    for run in plan.experiments.get(experiment, []):
        group = results.models.setdefault(run.model, ModelRuns(run.model, []))
        group.seeds.append(run.seed)
        loaded = load_run(root / run.folder, run.model, run.seed)
        if loaded is not None:
            group.runs.append(loaded)
    for run in responses:
        path = root / run.responses
        if path.is_file():
            try:
                results.responses[run.model] = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not valid JSON ({error})") from None
    return results
