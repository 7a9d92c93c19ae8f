"""The statistics behind a verdict: the noise of a difference of two models' means, or of one model's mean, its
p-value, and Holm's step-down thresholds that hold the family-wise error rate over an experiment's claims."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .results import ModelRuns


def binomial_error(group: ModelRuns, metric: str) -> tuple[float, int]:
    """One run's binomial error sqrt(p(1-p)/N) on the N images `metric` was measured on (N: the fewest of the
    group's runs), and N. N is 0 when a run's metrics do not say it: the error is then unknown (returned as 0),
    and a verdict that needs it is undetermined (`unknown_sample_sizes`)."""
    s = group.stat(metric)
    assert s is not None
    images = min(run.sample_size(metric) for run in group.runs)
    return (math.sqrt(max(s.mean * (1 - s.mean), 0.0) / images) if images else 0.0), images


def unknown_sample_sizes(groups: list[ModelRuns], metric: str) -> list[str]:
    """The models among `groups` some run of which does not say how many images `metric` was measured on."""
    return [g.model for g in groups if any(run.sample_size(metric) == 0 for run in g.runs)]


@dataclass(frozen=True)
class Noise:
    """The noise of the difference of two models' mean `metric` (`difference_noise`), or of one model's mean
    (`mean_noise`): a margin beyond `critical` x `se` is real."""

    se: float  # standard error of the difference of the means, or of the one mean (a fraction)
    df: float  # degrees of freedom of `se` (math.inf for the binomial test: the normal quantile)
    critical: float  # the two-sided critical value t(1 - (1 - confidence) / 2, df)
    test: str  # which rule estimated it (the Rule column)
    how: tuple[str, ...]  # how each side's error was estimated (the evidence): two sides, or one

    def p_value(self, difference: float) -> float:
        """The two-sided p-value of a difference of means, or of a margin (a fraction), under this noise."""
        from scipy.stats import t  # imported here: render must stay light (the Snakefile imports it on dry runs)

        if self.se == 0:
            return 0.0 if difference else 1.0
        return float(2 * t.sf(abs(difference) / self.se, self.df))


def _critical(confidence: float, df: float) -> float:
    """The two-sided critical value of Student's t at `confidence` (df math.inf: the normal quantile)."""
    from scipy.stats import t

    return float(t.ppf(1 - (1 - confidence) / 2, df))


def _welch_df(variances: tuple[float, float], runs: tuple[int, int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of two variances of means, each from its own n - 1."""
    total = sum(variances)
    spread = sum(v**2 / (n - 1) for v, n in zip(variances, runs, strict=True))
    return total**2 / spread if spread > 0 else float(sum(runs) - 2)  # no spread at all: the noise is 0 anyway


def difference_noise(worse: ModelRuns, better: ModelRuns, metric: str, confidence: float) -> Noise:
    """The standard error of `worse`'s mean minus `better`'s, its degrees of freedom and critical value. Both
    groups' runs must state their sample sizes (see `unknown_sample_sizes`).

    Every per-run spread is floored at the model's binomial error on its images, so two seeds that happen to
    agree do not make a difference of a few images look certain (the df stay those of the seeds: conservative).

    - Several seeds on each side: Welch. Each side's squared standard error is spread² / n, with df by
      Welch-Satterthwaite.
    - One run against several seeds: a single run says nothing about its seed-to-seed spread, and its binomial
      error alone would ignore it. The run takes the other model's seed spread (floored at its own binomial
      error): SE² = s₁² + s₂² / n, with df = n - 1, the only estimated variance (Crawford & Howell's test of a
      single case against a sample, 1998).
    - One run against one run: the binomial test, SE² = Σ p(1-p)/N, critical value the normal quantile."""
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
        described = [f"binomial, {n} images" for _, n in binomial]
        how = (described[0], described[1])
    se = math.sqrt(sum(spread**2 / n for spread, n in zip(spreads, runs, strict=True)))
    return Noise(se, df, _critical(confidence, df), test, how)


def mean_noise(group: ModelRuns, metric: str, confidence: float) -> Noise:
    """The standard error of one model's mean `metric` over its seeds, its degrees of freedom and critical value:
    the one-sample counterpart of `difference_noise`, with the same floor. The group's runs must state their sample
    sizes (see `unknown_sample_sizes`).

    - Several seeds: SE = s / √n, s the seed std floored at one run's binomial error on its images, df = n - 1.
    - One run: its binomial error, SE² = p(1-p)/N, critical value the normal quantile (df ∞)."""
    s = group.stat(metric)
    assert s is not None
    binomial, images = binomial_error(group, metric)
    if s.n > 1:
        spread, df = max(s.std, binomial), float(s.n - 1)
        test = "one-sample t: SE² = s² / n, s = seed std ≥ binomial error, df = n - 1"
        how = f"{s.n} seeds"
    else:
        spread, df = binomial, math.inf
        test = "binomial test: SE² = p(1 - p) / N, normal critical value (df ∞)"
        how = f"binomial, {images} images"
    return Noise(spread / math.sqrt(s.n), df, _critical(confidence, df), test, (how,))


@dataclass(frozen=True)
class HolmStep:
    """One hypothesis in Holm's step-down procedure."""

    rank: int  # 1 for the smallest p-value
    family: int  # how many hypotheses the family holds
    threshold: float  # alpha / (family - rank + 1): what its p-value is compared with
    rejected: bool  # its p-value and every smaller one are at or below their thresholds


def holm(p_values: list[float], alpha: float) -> list[HolmStep]:
    """Holm's step-down procedure (Holm 1979) over a family of p-values, in the order given: the k-th smallest is
    compared with alpha / (m - k + 1), and testing stops at the first that exceeds its threshold (it and every
    larger one are kept). Holds the family-wise error rate at alpha under any dependence; ties keep their order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    steps: dict[int, HolmStep] = {}
    rejecting = True
    for rank, index in enumerate(order, start=1):
        threshold = alpha / (len(p_values) - rank + 1)
        rejecting = rejecting and p_values[index] <= threshold
        steps[index] = HolmStep(rank, len(p_values), threshold, rejecting)
    return [steps[i] for i in range(len(p_values))]
