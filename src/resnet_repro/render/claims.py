"""Claims of the paper and the review, and their verdicts: reproduced, within noise, not reproduced or not run."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from .names import is_plain, is_residual, model_depth, model_label
from .results import ExperimentResults, ModelRuns

REPRODUCED, WITHIN_NOISE, NOT_REPRODUCED, NOT_RUN = "reproduced", "within noise", "not reproduced", "not run"
VERDICTS = (REPRODUCED, WITHIN_NOISE, NOT_REPRODUCED, NOT_RUN)
PAPER_FIG1, PAPER_FIG6, PAPER_T6, PAPER_T2 = "paper Fig. 1", "paper Fig. 6", "paper Table 6", "paper Table 2"


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
    df: float | None = None  # degrees of freedom of the noise (ordering claims; inf: the binomial test)
    critical: float | None = None  # the critical value the standard error of the difference is multiplied by


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


def binomial_error(group: ModelRuns, metric: str) -> tuple[float, int]:
    """One run's binomial error sqrt(p(1-p)/N) on the N images `metric` was measured on (N: the fewest of the
    group's runs), and N; 0 when the runs do not say N."""
    s = group.stat(metric)
    assert s is not None
    images = min(run.sample_size(metric) for run in group.runs)
    return (math.sqrt(max(s.mean * (1 - s.mean), 0.0) / images) if images else 0.0), images


@dataclass(frozen=True)
class Noise:
    """The noise of the difference of two models' mean `metric`: a margin beyond `critical` x `se` is real."""

    se: float  # standard error of the difference of the means (a fraction)
    df: float  # degrees of freedom of `se` (math.inf for the binomial test: the normal quantile)
    critical: float  # the two-sided critical value t(1 - (1 - confidence) / 2, df)
    test: str  # which rule estimated it (the Rule column)
    how: tuple[str, str]  # how each side's error was estimated (the evidence)


def _welch_df(variances: tuple[float, float], runs: tuple[int, int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of two variances of means, each from its own n - 1."""
    total = sum(variances)
    spread = sum(v**2 / (n - 1) for v, n in zip(variances, runs, strict=True))
    return total**2 / spread if spread > 0 else float(sum(runs) - 2)  # no spread at all: the noise is 0 anyway


def difference_noise(worse: ModelRuns, better: ModelRuns, metric: str, confidence: float) -> Noise:
    """The standard error of `worse`'s mean minus `better`'s, its degrees of freedom and critical value.

    Every per-run spread is floored at the model's binomial error on its images, so two seeds that happen to
    agree do not make a difference of a few images look certain (the df stay those of the seeds: conservative).

    - Several seeds on each side: Welch. Each side's squared standard error is spread² / n, with df by
      Welch-Satterthwaite.
    - One run against several seeds: a single run says nothing about its seed-to-seed spread, and its binomial
      error alone would ignore it. The run takes the other model's seed spread (floored at its own binomial
      error): SE² = s₁² + s₂² / n, with df = n - 1, the only estimated variance (Crawford & Howell's test of a
      single case against a sample, 1998).
    - One run against one run: the binomial test, SE² = Σ p(1-p)/N, critical value the normal quantile."""
    from scipy.stats import t  # imported here: render must stay light (the Snakefile imports it on dry runs)

    groups = (worse, better)
    stats = [g.stat(metric) for g in groups]
    assert stats[0] and stats[1]
    binomial = [binomial_error(g, metric) for g in groups]
    runs = (stats[0].n, stats[1].n)
    if min(runs) > 1:
        spreads = [max(s.std, b) for s, (b, _) in zip(stats, binomial, strict=True)]
        df = _welch_df((spreads[0] ** 2 / runs[0], spreads[1] ** 2 / runs[1]), runs)
        test = "Welch: SE² = Σ s² / n, s = seed std ≥ binomial error, Welch-Satterthwaite df"
        how = (f"{runs[0]} seeds", f"{runs[1]} seeds")
    elif max(runs) > 1:
        seeded = 0 if runs[0] > 1 else 1
        borrowed = stats[seeded].std
        spreads = [max(borrowed, b) for b, _ in binomial]
        df = float(runs[seeded] - 1)
        test = (
            "one run vs n seeds: the run takes the seeds' spread s (each side ≥ its binomial error), "
            "SE² = s² + s² / n, df = n - 1 (Crawford-Howell)"
        )
        single = f"1 run, spread of the other's {runs[seeded]} seeds"
        how = (single, f"{runs[1]} seeds") if seeded else (f"{runs[0]} seeds", single)
    else:
        spreads = [b for b, _ in binomial]
        df = math.inf
        test = "binomial test: SE² = Σ p(1 - p) / N, normal critical value (df ∞)"
        described = [f"binomial, {n} images" if n else "1 run, no sample size" for _, n in binomial]
        how = (described[0], described[1])
    se = math.sqrt(sum(spread**2 / n for spread, n in zip(spreads, runs, strict=True)))
    return Noise(se, df, float(t.ppf(1 - (1 - confidence) / 2, df)), test, how)


def _quantile(tol: dict) -> str:
    return f"{1 - (1 - tol['confidence']) / 2:g}"


@dataclass(frozen=True)
class Worse(Claim):
    """`worse` has a higher `metric` than `better` (means over seeds). Reproduced when the margin exceeds the
    noise of the difference (the critical value of Student's t at `confidence`, two-sided, times its standard
    error: see `difference_noise`; at least `ordering_points`), not reproduced when it is beyond that noise the
    other way, and within noise otherwise."""

    worse: str = ""
    better: str = ""
    metric: str = "test_error"

    def models(self) -> list[str]:
        return [self.worse, self.better]

    def tolerance(self, tol: dict) -> str:
        return (
            f"{METRIC_WORDS.get(self.metric, self.metric)}: |margin| > t({_quantile(tol)}, df) standard errors of "
            "the difference (Welch over seeds; 1 run vs 1: binomial test)"
        )

    def judge(self, groups: list[ModelRuns], tol: dict) -> Verdict:
        worse, better = (g.stat(self.metric) for g in groups)
        assert worse and better
        margin = 100 * (worse.mean - better.mean)
        diff = difference_noise(groups[0], groups[1], self.metric, tol["confidence"])
        noise = max(100 * diff.critical * diff.se, tol["ordering_points"])
        if margin > noise:
            outcome = REPRODUCED
        elif margin < -noise:
            outcome = NOT_REPRODUCED
        else:
            outcome = WITHIN_NOISE
        evidence = (
            f"{_describe(groups[0], self.metric)} vs {_describe(groups[1], self.metric)}: margin {margin:+.2f} "
            f"points, noise ±{noise:.2f} ({diff.how[0]}; {diff.how[1]})"
        )
        rule = (
            f"{METRIC_WORDS.get(self.metric, self.metric)}: |margin| > t({_quantile(tol)}, df) \u00d7 SE of the "
            f"difference; {diff.test}"
        )
        return Verdict(
            "",
            "",
            "",
            evidence,
            rule,
            outcome,
            round(margin, 4),
            round(noise, 4),
            f"{worse.n} vs {better.n}",
            round(diff.df, 2),
            round(diff.critical, 4),
        )


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


def generic_claims(models: list[str]) -> list[Claim]:
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


def judge(claims: list[Claim], results: ExperimentResults, tol: dict) -> list[Verdict]:
    """Every claim's verdict on the results; all "not run" when config.yaml disables the experiment."""
    verdicts = [claim.evaluate(results, tol) for claim in claims]
    if not results.enabled:
        verdicts = [
            Verdict(
                v.experiment, v.claim, v.source, "not run: experiment disabled in config.yaml", v.tolerance, NOT_RUN
            )
            for v in verdicts
        ]
    return verdicts
