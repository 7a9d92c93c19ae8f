"""Claims of the paper and the review, and their verdicts: reproduced, within noise, not reproduced,
undetermined (the noise cannot be computed) or not run; the statistical claims of an experiment (orderings of two
models, and a model at or above chance) held to one family-wise error rate by Holm's procedure."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from .names import is_plain, is_residual, model_depth, model_label
from .results import ExperimentResults, ModelRuns
from .statistics import difference_noise, holm, mean_noise, unknown_sample_sizes

REPRODUCED, WITHIN_NOISE, NOT_REPRODUCED = "reproduced", "within noise", "not reproduced"
UNDETERMINED, NOT_RUN = "undetermined", "not run"
VERDICTS = (REPRODUCED, WITHIN_NOISE, NOT_REPRODUCED, UNDETERMINED, NOT_RUN)
PAPER_FIG1, PAPER_FIG6, PAPER_T6, PAPER_T2 = "paper Fig. 1", "paper Fig. 6", "paper Table 6", "paper Table 2"


@dataclass(frozen=True)
class Verdict:
    experiment: str
    claim: str
    source: str
    evidence: str
    tolerance: str  # the rule the claim was judged by
    verdict: str
    margin: float | None = None  # points, in the claimed direction (statistical claims: Worse, AtChance)
    noise: float | None = None  # points: the margin a claim must exceed to count as reproduced
    seeds: str = ""  # runs behind each side, e.g. "2 vs 2" (or "3": one side)
    df: float | None = None  # degrees of freedom of the noise (statistical claims; inf: the binomial test)
    critical: float | None = None  # what the standard error (of a difference, or a mean) is multiplied by
    p_value: float | None = None  # two-sided p-value of the margin (statistical claims whose noise is known)
    threshold: float | None = None  # the level the p-value is tested at: 1 - confidence, or Holm's share of it


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


def _describe(group: ModelRuns, metric: str, words: str = "") -> str:
    """E.g. "FC-20 test accuracy 17.27% (mean of 3 seeds)", with `words` naming the metric (or nothing)."""
    s = group.stat(metric)
    assert s is not None
    seeds = f"mean of {s.n} seeds" if s.n > 1 else "1 seed"
    return f"{model_label(group.model)} {words + ' ' if words else ''}{_pct(s.mean)} ({seeds})"


def _outcome(margin: float, noise: float) -> str:
    """Reproduced beyond the noise in the claimed direction, not reproduced beyond it the other way."""
    if margin > noise:
        return REPRODUCED
    return NOT_REPRODUCED if margin < -noise else WITHIN_NOISE


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


def _quantile(tol: dict) -> str:
    return f"{1 - (1 - tol['confidence']) / 2:g}"


@dataclass(frozen=True)
class Worse(Claim):
    """`worse` has a higher `metric` than `better` (means over seeds). Reproduced when the margin exceeds the
    noise of the difference (the critical value of Student's t at `confidence`, two-sided, times its standard
    error: see `difference_noise`; at least `ordering_points`), not reproduced when it is beyond that noise the
    other way, and within noise otherwise; undetermined when a run does not say how many images the metric was
    measured on (its binomial floor, and so the noise, is unknown). `judge` then tests the experiment's claims
    with a p-value (these and `AtChance`'s) as one family (Holm)."""

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
        described = (
            f"{_describe(groups[0], self.metric)} vs {_describe(groups[1], self.metric)}: margin {margin:+.2f} points"
        )
        words = METRIC_WORDS.get(self.metric, self.metric)
        seeds = f"{worse.n} vs {better.n}"
        unknown = unknown_sample_sizes(groups, self.metric)
        if unknown:
            evidence = (
                f"{described}; noise unknown: the metrics of {' and '.join(map(model_label, unknown))} do not say on "
                f"how many images the {words} was measured"
            )
            return Verdict("", "", "", evidence, self.tolerance(tol), UNDETERMINED, round(margin, 4), seeds=seeds)
        diff = difference_noise(groups[0], groups[1], self.metric, tol["confidence"])
        noise = max(100 * diff.critical * diff.se, tol["ordering_points"])
        outcome = _outcome(margin, noise)
        evidence = f"{described}, noise ±{noise:.2f} ({diff.how[0]}; {diff.how[1]})"
        rule = f"{words}: |margin| > t({_quantile(tol)}, df) \u00d7 SE of the difference; {diff.test}"
        return Verdict(
            "",
            "",
            "",
            evidence,
            rule,
            outcome,
            round(margin, 4),
            round(noise, 4),
            seeds,
            round(diff.df, 2),
            round(diff.critical, 4),
            diff.p_value(worse.mean - better.mean),
            round(1 - tol["confidence"], 12),  # not 0.050000000000000044
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
    """Our mean `metric` of `model` over its seeds is within `tolerance_key` points of a reference value (in %).
    Never the best seed: a minimum over seeds of the test error is a selection on the test set, optimistic by about
    half a seed standard deviation at two seeds."""

    model: str = ""
    metric: str = "test_error"
    reference: float = 0.0
    tolerance_key: str = "paper_error_points"

    def models(self) -> list[str]:
        return [self.model]

    def tolerance(self, tol: dict) -> str:
        return f"|our mean - reference| <= {tol[self.tolerance_key]:g} points"

    def judge(self, groups: list[ModelRuns], tol: dict) -> tuple[bool, str]:
        s = groups[0].stat(self.metric)
        assert s is not None
        ours = 100 * s.mean
        what = f"mean of {s.n} seeds" if s.n > 1 else "1 seed"
        diff = ours - self.reference
        evidence = f"ours {ours:.2f}% ({what}) vs {self.reference:.2f}%: {diff:+.2f} points"
        return abs(diff) <= tol[self.tolerance_key], evidence


@dataclass(frozen=True)
class AtChance(Claim):
    """The model does not learn: its mean test accuracy over seeds lies inside the band of `chance_points` around
    chance (1/classes); or, with `above`, it learns: its mean accuracy is more than `learns_points` above chance.
    Judged against seed noise like `Worse`: the margin in the claimed direction (above: accuracy - (chance +
    learns_points); not above: chance_points - |accuracy - chance|, how far inside the band the mean lies) is
    reproduced when it exceeds the critical value of Student's t at `confidence`, two-sided, times the standard error
    of the mean (see `mean_noise`), not reproduced when it is beyond that noise the other way, within noise otherwise;
    undetermined when a run does not say on how many images the accuracy was measured. Its p-value puts it in the
    experiment's Holm family with the ordering claims."""

    model: str = ""
    above: bool = False

    def models(self) -> list[str]:
        return [self.model]

    def _margin_rule(self, tol: dict) -> str:
        if self.above:
            return f"margin = accuracy - (chance + {tol['learns_points']:g} points)"
        return f"margin = {tol['chance_points']:g} points - |accuracy - chance|"

    def tolerance(self, tol: dict) -> str:
        return (
            f"test accuracy: |margin| > t({_quantile(tol)}, df) standard errors of the mean, {self._margin_rule(tol)} "
            "(seeds: one-sample t; 1 run: binomial test)"
        )

    def judge(self, groups: list[ModelRuns], tol: dict) -> Verdict:
        group, metric = groups[0], "test_accuracy"
        s = group.stat(metric)
        assert s is not None
        chance = 1 / group.runs[0].classes
        if self.above:
            margin = 100 * (s.mean - chance) - tol["learns_points"]
        else:
            margin = tol["chance_points"] - 100 * abs(s.mean - chance)
        described = f"{_describe(group, metric, 'test accuracy')} vs chance {_pct(chance)}: margin {margin:+.2f} points"
        seeds = str(s.n)
        if unknown_sample_sizes(groups, metric):
            evidence = (
                f"{described}; noise unknown: the metrics of {model_label(group.model)} do not say on how many "
                "images the test accuracy was measured"
            )
            return Verdict("", "", "", evidence, self.tolerance(tol), UNDETERMINED, round(margin, 4), seeds=seeds)
        mean = mean_noise(group, metric, tol["confidence"])
        noise = 100 * mean.critical * mean.se
        rule = (
            f"test accuracy: |margin| > t({_quantile(tol)}, df) \u00d7 SE of the mean, {self._margin_rule(tol)}; "
            f"{mean.test}"
        )
        return Verdict(
            "",
            "",
            "",
            f"{described}, noise ±{noise:.2f} ({mean.how[0]})",
            rule,
            _outcome(margin, noise),
            round(margin, 4),
            round(noise, 4),
            seeds,
            round(mean.df, 2),
            round(mean.critical, 4),
            mean.p_value(margin / 100),
            round(1 - tol["confidence"], 12),
        )


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
    """Every claim's verdict on the results, the claims with a p-value (orderings, and a model at or above chance)
    tested as one family by Holm's procedure when `tol["holm"]` is on; all "not run" when config.yaml disables the
    experiment."""
    verdicts = [claim.evaluate(results, tol) for claim in claims]
    if tol["holm"]:
        verdicts = holm_verdicts(claims, verdicts, results, tol)
    if not results.enabled:
        verdicts = [
            Verdict(
                v.experiment, v.claim, v.source, "not run: experiment disabled in config.yaml", v.tolerance, NOT_RUN
            )
            for v in verdicts
        ]
    return verdicts


HOLM_RULE = (
    "Holm over the experiment's claims with a p-value: the k-th smallest of m is tested at (1 - confidence) / "
    "(m - k + 1), in order, and a claim after the first that fails is within noise whatever its own p-value."
)


def holm_verdicts(claims: list[Claim], verdicts: list[Verdict], results: ExperimentResults, tol: dict) -> list[Verdict]:
    """`verdicts` with the claims that have a p-value judged again at Holm's threshold for their rank (the noise,
    critical value and rule then say that level), each reproduced or not reproduced only when Holm rejects it."""
    tested = [i for i, v in enumerate(verdicts) if v.p_value is not None]
    alpha = 1 - tol["confidence"]
    steps = holm([verdicts[i].p_value for i in tested], alpha)  # type: ignore[misc]
    adjusted = list(verdicts)
    for index, step in zip(tested, steps, strict=True):
        again = claims[index].evaluate(results, tol | {"confidence": 1 - step.threshold})
        if not step.rejected and again.verdict in (REPRODUCED, NOT_REPRODUCED):
            again = replace(
                again,
                verdict=WITHIN_NOISE,
                evidence=f"{again.evidence}; Holm stopped at a smaller p-value above its threshold",
            )
        share = f"{alpha:g}/{step.family - step.rank + 1}"
        adjusted[index] = replace(
            again, tolerance=f"{again.tolerance}; Holm: p-value {step.rank} of {step.family}, tested at {share}"
        )
    return adjusted
