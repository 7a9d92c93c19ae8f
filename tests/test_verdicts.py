"""Verdicts that say no more than the runs show (issue 27): an ImageNet claim judged against its real noise, from
what `evaluate_imagenet` writes; a claim whose noise cannot be computed is undetermined; the FC nets' claims (at or
above chance) judged against the noise of one mean; Holm's step-down procedure over each experiment's claims; and no
verdict reads the best seed."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
from test_imagenet import TINY_SCHEDULE, make_tiny_imagenet
from test_render import TOL, full_config, read_csv

from resnet_repro.plan import build_plan, load_config
from resnet_repro.render.claims import Worse, judge
from resnet_repro.render.experiments import REGISTRY, REVIEW_FC_CLAIMS, TABLE3_CLAIMS, experiment_claims
from resnet_repro.render.references import load_references
from resnet_repro.render.report import render_experiment
from resnet_repro.render.results import ExperimentResults, ModelRuns, RunResult, load_run
from resnet_repro.render.statistics import holm
from resnet_repro.runfiles import write_evaluation

REPO = Path(__file__).resolve().parents[1]
IMAGENET_VAL = 50_000  # ILSVRC-2012's validation images: what a full ImageNet evaluation rests on
B_OVER_C = TABLE3_CLAIMS[1]  # 'ResNet-34 C is "marginally better" than B (top-1 error)'


def runs_of(
    errors: dict[str, list[float]], test_images: int | None = IMAGENET_VAL, classes: int = 1000
) -> ExperimentResults:
    """Runs with these test errors per seed, each evaluated on `test_images` (None: the metrics do not say, as
    evaluate_imagenet's did before it wrote test_images: no count and, at 1,000 classes, no confusion matrix)."""
    groups = {}
    for model, values in errors.items():
        runs = []
        for seed, error in enumerate(values):
            metrics = {"test_error": error, "top1_accuracy": 1 - error, "train_error": error}
            metrics["per_class_accuracy"] = {str(c): 1 - error for c in range(classes)}
            if test_images is not None:
                metrics["test_images"] = test_images
            runs.append(RunResult(model, seed, Path("."), metrics, None))
        groups[model] = ModelRuns(model, list(range(len(values))), runs)
    return ExperimentResults("imagenet_table3", "imagenet", True, groups)


# ------------------------------------------------------------------------------ noise known, or undetermined
@pytest.mark.parametrize(
    "b, c",
    [
        ([0.2452], [0.2451]),  # one run each: the binomial test on 50,000 images
        ([0.2452] * 2, [0.2451] * 2),  # seeds that agree exactly: each spread floored at the binomial error
        ([0.24519, 0.2452, 0.24521], [0.2451] * 3),  # three seeds a side, agreeing to 0.002 points
        ([0.2452], [0.2450, 0.2451, 0.2452]),  # one run against three seeds
    ],
    ids=["1v1", "2v2-equal", "3v3", "1v3"],
)
def test_an_imagenet_margin_of_a_hundredth_of_a_point_is_never_reproduced(b: list[float], c: list[float]) -> None:
    verdict = B_OVER_C.evaluate(runs_of({"resnet34_b": b, "resnet34_c": c}), TOL)
    assert verdict.margin == pytest.approx(0.01, abs=1e-3)
    assert verdict.verdict == "within noise"
    # One run's binomial error on 50,000 images at 24.5% is 0.19 points, the floor of every seed spread: the noise
    # of the difference is 1.96 x 0.19 x √2 = 0.53 points for one run a side, and never below 0.43 (three seeds a
    # side, t(0.975, 4) = 2.78): forty times the margin.
    assert verdict.noise > 0.43 and verdict.p_value > 0.9


def test_a_claim_whose_noise_cannot_be_computed_is_undetermined() -> None:
    """Without the number of images behind the errors there is no binomial floor: before evaluate_imagenet wrote
    test_images, B at 24.52% against C at 24.51% came out "reproduced, noise ±0.00"."""
    verdict = B_OVER_C.evaluate(runs_of({"resnet34_b": [0.2452], "resnet34_c": [0.2451]}, test_images=None), TOL)
    assert verdict.verdict == "undetermined"
    assert (verdict.noise, verdict.p_value, verdict.df, verdict.critical) == (None, None, None, None)
    assert verdict.margin == pytest.approx(0.01) and verdict.seeds == "1 vs 1"
    assert "noise unknown" in verdict.evidence and "ResNet-34 B and ResNet-34 C" in verdict.evidence
    # A margin of 30 points with one side's count unknown is undetermined too: never a pass on unknown noise.
    one_sided = runs_of({"resnet34_b": [0.55], "resnet34_c": [0.25]})
    one_sided.models["resnet34_b"].runs[0].metrics.pop("test_images")
    verdict = B_OVER_C.evaluate(one_sided, TOL)
    assert verdict.verdict == "undetermined" and "ResNet-34 B do not say" in verdict.evidence
    # Several seeds do not replace the count: their spread would have no floor.
    seeds = runs_of({"resnet34_b": [0.30, 0.31], "resnet34_c": [0.20, 0.21]}, test_images=None)
    assert B_OVER_C.evaluate(seeds, TOL).verdict == "undetermined"


@pytest.fixture(scope="module")
def imagenet_evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ImageNet run (6 classes, so top-5 keys as at 1,000) trained 9 steps and evaluated by evaluate_imagenet:
    the folder holding its metrics.json and details.json."""
    from resnet_repro.distributed import train_distributed
    from resnet_repro.evaluate_imagenet import evaluate_imagenet
    from resnet_repro.imagenet import build_index
    from resnet_repro.runspec import RunSpec
    from resnet_repro.settings import DistributedOptions, TrainSettings

    base = tmp_path_factory.mktemp("imagenet_eval")
    index = build_index(make_tiny_imagenet(base / "ILSVRC2012", classes=6, train=4, val=3), base / "index")
    out = base / "run"
    layout = DistributedOptions(device="cpu", workers=0)
    train_distributed(RunSpec("imagenet", "resnet18", 0, TrainSettings.from_dict(TINY_SCHEDULE), layout), index, out)
    evaluate_imagenet(out / "model.pt", index, out / "metrics.json", "cpu", workers=0)
    return out


def test_evaluate_imagenet_writes_the_images_its_errors_rest_on(imagenet_evaluation: Path) -> None:
    run = load_run(imagenet_evaluation, "resnet18")
    assert run is not None and run.metrics["test_images"] == 18  # 6 classes x 3 validation images
    assert run.sample_size("test_error") == 18
    run.metrics.pop("confusion_matrix")  # as at 1,000 classes, where evaluate_imagenet leaves it out
    assert run.sample_size("test_error") == 18


def imagenet_metrics(template: dict, model: str, top1: float) -> dict:
    """What evaluate_imagenet writes (`template`, a real evaluation), with this model's errors, measured on the
    50,000 validation images, and without the confusion matrix, as at 1,000 classes."""
    metrics = copy.deepcopy(template)
    del metrics["confusion_matrix"]
    top5 = round(top1 / 3, 6)
    metrics |= {"model": model, "test_error": top1, "top1_accuracy": round(1 - top1, 6), "test_images": IMAGENET_VAL}
    metrics |= {"top5_error": top5, "top5_accuracy": round(1 - top5, 6)}
    return metrics


# Test errors: B 1.48 points better than A, C 0.01 better than B, ResNet-50 3.48 points worse than B, ResNet-101
# 3.5 better than ResNet-50; no ResNet-152.
TABLE3_TOP1 = {"plain34": 0.29, "resnet34": 0.26, "resnet34_b": 0.2452, "resnet34_c": 0.2451, "resnet50": 0.28}
TABLE3_TOP1 |= {"resnet101": 0.245}


@pytest.mark.parametrize("count", ["written", "unknown"])
def test_table3_verdicts_from_what_evaluate_imagenet_writes(
    imagenet_evaluation: Path, tmp_path: Path, count: str
) -> None:
    """Table 3's claims on runs in exactly evaluate_imagenet's format: judged against the binomial noise of 50,000
    validation images when the count is written; undetermined, never reproduced, when it is not."""
    from test_render import fake_run

    template = load_run(imagenet_evaluation, "resnet18").metrics
    config = full_config(tmp_path)
    config["experiments"] = {"imagenet_table3": config["experiments"]["imagenet_table3"]}
    config["all"] = ["imagenet_table3"]
    plan = build_plan(config, check_paths=False)
    for model, top1 in TABLE3_TOP1.items():
        run = plan.run("inet", model, 0)
        fake_run(tmp_path / run.folder, model, final=(top1 + 0.01, top1))  # the training curves
        metrics = imagenet_metrics(template, model, top1)
        assert set(metrics) == set(template) - {"confusion_matrix"}  # no key the evaluator does not write
        if count == "unknown":
            del metrics["test_images"]
        write_evaluation(metrics, tmp_path / run.folder / "metrics.json")
    render_experiment(plan, "imagenet_table3", tmp_path / "out", tmp_path)
    verdicts = {r["claim"]: r for r in read_csv(tmp_path / "out/tables/verdict.csv")}
    ordering = [c.text for c in TABLE3_CLAIMS[:4]]
    assert verdicts[TABLE3_CLAIMS[4].text]["verdict"] == "not run"
    if count == "unknown":
        assert {verdicts[c]["verdict"] for c in ordering} == {"undetermined"}
        assert all(verdicts[c]["noise"] == "" and verdicts[c]["p_value"] == "" for c in ordering)
        return
    assert [verdicts[c]["verdict"] for c in ordering] == [
        "reproduced",
        "within noise",
        "not reproduced",
        "reproduced",
    ]
    c_over_b = verdicts[B_OVER_C.text]
    assert float(c_over_b["margin"]) == pytest.approx(0.01) and float(c_over_b["noise"]) > 0.5
    b_over_a = verdicts[TABLE3_CLAIMS[0].text]
    assert float(b_over_a["margin"]) == pytest.approx(1.48) and "binomial, 50000 images" in b_over_a["evidence"]
    # Holm over the four claims with a p-value: B over A has the third smallest (its margin is 5 standard errors,
    # the ResNet-50 ones 12 and 13) and is tested at 0.05 / 2; C over B has the largest, tested at 0.05.
    assert float(b_over_a["threshold"]) == pytest.approx(0.05 / 2) and float(c_over_b["threshold"]) == 0.05


# ------------------------------------------------------------------------------- at chance, or above it
CIFAR_TEST = 10_000  # CIFAR-10's test images
STUCK, LEARNS, RESNET_BEATS_FC = REVIEW_FC_CLAIMS  # FC-56 does not learn; FC-20 learns; ResNet-18 beats FC-20


def accuracies(values: dict[str, list[float]], test_images: int | None = CIFAR_TEST) -> ExperimentResults:
    """CIFAR-10 runs (10 classes: chance is 10%) with these test accuracies per seed."""
    errors = {model: [1 - a for a in accs] for model, accs in values.items()}
    return runs_of(errors, test_images=test_images, classes=10)


def one_mean_se(accuracy: float, n: int = 3, images: int = CIFAR_TEST) -> float:
    """The standard error in points of a mean accuracy over `n` seeds that agree more closely than one run's
    binomial error on `images` images (the floor of their spread)."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / images) / math.sqrt(n)


def test_fc20_learns_over_three_tight_seeds() -> None:
    """17.1% over 3 seeds 0.1 points apart, on 10,000 images: the seeds agree more closely than one run's binomial
    error (0.38 points), which is the spread; 2.1 points above chance + 5 against t(0.975, 2) x 0.22 = 0.94."""
    from scipy.stats import t

    runs = accuracies({"fc20": [0.170, 0.171, 0.172], "fc56": [0.095, 0.100, 0.105]})
    verdict = LEARNS.evaluate(runs, TOL)
    se = one_mean_se(0.171)
    assert (verdict.verdict, verdict.seeds, verdict.df, verdict.threshold) == ("reproduced", "3", 2.0, 0.05)
    assert verdict.critical == pytest.approx(t.ppf(0.975, 2), abs=1e-4)
    assert verdict.margin == pytest.approx(2.1) and verdict.noise == pytest.approx(t.ppf(0.975, 2) * se, rel=1e-4)
    assert verdict.p_value == pytest.approx(2 * t.sf(2.1 / se, 2), rel=1e-4)
    assert verdict.evidence == (
        "FC-20 test accuracy 17.10% (mean of 3 seeds) vs chance 10.00%: margin +2.10 points, noise ±0.94 (3 seeds)"
    )
    assert "margin = accuracy - (chance + 5 points)" in verdict.tolerance and "one-sample t" in verdict.tolerance
    # With FC-56 (p about 0.02) in the family, FC-20's smaller p-value is tested at 0.05 / 2, with t at that level.
    held = {v.claim: v for v in judge([STUCK, LEARNS], runs, TOL)}[LEARNS.text]
    assert held.verdict == "reproduced" and held.threshold == pytest.approx(0.05 / 2)
    assert held.critical == pytest.approx(t.ppf(1 - 0.05 / 4, 2), abs=1e-4)
    assert held.noise == pytest.approx(t.ppf(1 - 0.05 / 4, 2) * se, rel=1e-4)
    assert "Holm: p-value 1 of 2, tested at 0.05/2" in held.tolerance


def test_fc56_at_chance_does_not_learn() -> None:
    """10.0% ± 0.1 over 3 seeds: the mean lies 2 points inside the band of ±2 around chance, the noise 0.75."""
    from scipy.stats import t

    verdict = STUCK.evaluate(accuracies({"fc56": [0.099, 0.100, 0.101]}), TOL)
    assert (verdict.verdict, verdict.seeds, verdict.df) == ("reproduced", "3", 2.0)
    assert verdict.margin == pytest.approx(2.0)
    assert verdict.noise == pytest.approx(t.ppf(0.975, 2) * one_mean_se(0.10), rel=1e-4)
    assert "vs chance 10.00%: margin +2.00 points" in verdict.evidence
    assert "margin = 2 points - |accuracy - chance|" in verdict.tolerance
    # Off chance either way by a point: a margin of 1 point, still beyond the noise of 0.8.
    for mean in (0.09, 0.11):
        off = STUCK.evaluate(accuracies({"fc56": [mean - 0.001, mean, mean + 0.001]}), TOL)
        assert off.verdict == "reproduced" and off.margin == pytest.approx(1.0)


def test_fc_seeds_too_spread_are_within_noise() -> None:
    """Seeds 5 (FC-20) and 4 (FC-56) points apart: noise t(0.975, 2) x 5/√3 = 12.4 and 9.9 points, margins 2."""
    from scipy.stats import t

    runs = accuracies({"fc20": [0.12, 0.17, 0.22], "fc56": [0.06, 0.10, 0.14]})
    learns, stuck = LEARNS.evaluate(runs, TOL), STUCK.evaluate(runs, TOL)
    assert (learns.verdict, stuck.verdict) == ("within noise", "within noise")
    assert learns.margin == pytest.approx(2.0) and stuck.margin == pytest.approx(2.0)
    assert learns.noise == pytest.approx(t.ppf(0.975, 2) * 5 / math.sqrt(3), rel=1e-4)
    assert stuck.noise == pytest.approx(t.ppf(0.975, 2) * 4 / math.sqrt(3), rel=1e-4)
    assert learns.p_value > 0.05 and stuck.p_value > 0.05


def test_fc_far_from_the_claim_is_not_reproduced() -> None:
    """FC-20 at 11.1%, 3.9 points below chance + 5; FC-56 at 20%, 8 points outside the chance band."""
    runs = accuracies({"fc20": [0.110, 0.111, 0.112], "fc56": [0.199, 0.200, 0.201]})
    learns, stuck = LEARNS.evaluate(runs, TOL), STUCK.evaluate(runs, TOL)
    assert (learns.verdict, stuck.verdict) == ("not reproduced", "not reproduced")
    assert learns.margin == pytest.approx(-3.9) and stuck.margin == pytest.approx(-8.0)
    assert -learns.margin > learns.noise and -stuck.margin > stuck.noise and learns.p_value < 0.01


def test_a_single_fc_run_is_the_binomial_test() -> None:
    from scipy.stats import norm

    verdict = LEARNS.evaluate(accuracies({"fc20": [0.17]}), TOL)
    se = one_mean_se(0.17, n=1)
    assert (verdict.verdict, verdict.seeds, verdict.df) == ("reproduced", "1", math.inf)
    assert verdict.critical == pytest.approx(norm.ppf(0.975), abs=1e-4)
    assert verdict.noise == pytest.approx(norm.ppf(0.975) * se, rel=1e-4)  # 0.74 points
    assert verdict.p_value == pytest.approx(2 * norm.sf(2.0 / se), rel=1e-4)
    assert verdict.evidence.endswith(
        "(1 seed) vs chance 10.00%: margin +2.00 points, noise ±0.74 (binomial, 10000 images)"
    )
    assert "binomial test" in verdict.tolerance


def test_an_fc_claim_without_image_counts_is_undetermined() -> None:
    runs = accuracies({"fc20": [0.30, 0.31, 0.32], "fc56": [0.10, 0.10, 0.10]}, test_images=None)
    for claim, margin in ((LEARNS, 16.0), (STUCK, 2.0)):  # 16 points: never a pass on unknown noise all the same
        verdict = claim.evaluate(runs, TOL)
        assert (verdict.verdict, verdict.seeds) == ("undetermined", "3")
        assert (verdict.noise, verdict.p_value, verdict.df, verdict.critical) == (None, None, None, None)
        assert verdict.margin == pytest.approx(margin) and "noise unknown" in verdict.evidence
        assert "do not say on how many images the test accuracy was measured" in verdict.evidence


def three_seeds(mean: float, margin: float, p_value: float) -> list[float]:
    """Three accuracies around `mean` whose spread makes a margin of `margin` points this two-sided p-value."""
    from scipy.stats import t

    step = margin / 100 * math.sqrt(3) / t.isf(p_value / 2, 2)  # the sample std of (mean - step, mean, mean + step)
    return [mean - step, mean, mean + step]


def test_holm_runs_over_the_fc_claims_and_the_ordering_claim() -> None:
    """FC-56 at chance (p 0.024), FC-20 3 points beyond chance + 5 (p 0.02), ResNet-18 no better than FC-20 (p 1):
    each FC claim passes alone at 0.05; Holm over the three tests FC-20 at 0.05/3, where it fails, and so keeps
    FC-56 too, below its own 0.05/2."""
    from scipy.stats import t

    runs = accuracies(
        {
            "fc56": three_seeds(0.10, 2.0, 0.024),
            "fc20": three_seeds(0.18, 3.0, 0.02),
            "cifar_resnet18": [0.175, 0.18, 0.185],
        }
    )
    claims = list(REVIEW_FC_CLAIMS)
    alone = [claim.evaluate(runs, TOL) for claim in claims]
    assert [v.verdict for v in alone] == ["reproduced", "reproduced", "within noise"]
    assert [v.p_value for v in alone] == pytest.approx([0.024, 0.02, 1.0], rel=1e-3)
    held = judge(claims, runs, TOL)
    thresholds = [step.threshold for step in holm([v.p_value for v in alone], 0.05)]
    assert thresholds == pytest.approx([0.05 / 2, 0.05 / 3, 0.05])  # the family of three, ranked by p-value
    assert [v.threshold for v in held] == pytest.approx(thresholds)
    assert [v.verdict for v in held] == ["within noise"] * 3
    assert held[1].critical == pytest.approx(t.ppf(1 - 0.05 / 6, 2), abs=1e-4)  # t at Holm's level for FC-20
    assert held[1].noise > held[1].margin > alone[1].noise
    assert "Holm: p-value 1 of 3, tested at 0.05/3" in held[1].tolerance
    assert "Holm: p-value 2 of 3, tested at 0.05/2" in held[0].tolerance
    # FC-56's margin is beyond the noise at its own level, 0.05/2: Holm, stopped at FC-20, keeps it all the same.
    assert held[0].margin > held[0].noise and "Holm stopped at a smaller p-value" in held[0].evidence
    assert "Holm: p-value 3 of 3, tested at 0.05/1" in held[2].tolerance
    # Without Holm each is tested alone at 0.05.
    assert judge(claims, runs, TOL | {"holm": False}) == alone


# ------------------------------------------------------------------------------------------- Holm
def test_holm_on_crafted_p_values() -> None:
    alpha = 0.05
    # A claim that passes alone (0.02 < 0.05) fails Holm over six: the smallest p-value is tested at 0.05 / 6.
    alone = holm([0.02], alpha)[0]
    assert alone.rejected and alone.threshold == 0.05
    six = holm([0.5, 0.6, 0.02, 0.7, 0.8, 0.9], alpha)
    assert six[2].rank == 1 and six[2].threshold == pytest.approx(0.05 / 6) and not six[2].rejected
    assert not any(step.rejected for step in six)
    # The order of adjustment: the k-th smallest p-value is tested at alpha / (m - k + 1), whatever the input
    # order, and testing stops at the first that fails: 0.011 > 0.05/5 stops it, so 0.012 <= 0.05/4 is kept.
    p_values = [0.3, 0.012, 0.001, 0.5, 0.04, 0.011]
    steps = holm(p_values, alpha)
    assert [s.rank for s in steps] == [5, 3, 1, 6, 4, 2]
    assert [s.threshold for s in steps] == pytest.approx([0.05 / 2, 0.05 / 4, 0.05 / 6, 0.05, 0.05 / 3, 0.05 / 5])
    assert [s.rejected for s in steps] == [False, False, True, False, False, False]
    assert p_values[1] <= steps[1].threshold  # below its own threshold, kept all the same
    # All below their thresholds: all rejected; the last is tested at alpha itself. Ties keep their order.
    assert [s.rejected for s in holm([0.001, 0.02, 0.009], alpha)] == [True, True, True]
    assert [s.rank for s in holm([0.01, 0.01], alpha)] == [1, 2]
    assert holm([], alpha) == []


def binomial_pair(z: float, images: int = 10_000, worse: float = 0.10) -> tuple[float, float]:
    """Two single runs' test errors (worse, better) on `images` images whose binomial test gives statistic z."""
    from scipy.optimize import brentq

    def statistic(better: float) -> float:
        se = math.sqrt((worse * (1 - worse) + better * (1 - better)) / images)
        return (worse - better) / se - z

    return worse, brentq(statistic, 1e-6, worse)


def family(zs: list[float]) -> tuple[list[Worse], ExperimentResults]:
    """One ordering claim per z, each between two single runs whose binomial test gives that z."""
    claims, errors = [], {}
    for k, z in enumerate(zs):
        worse, better = binomial_pair(z)
        errors[f"plain{8 + 6 * k}"], errors[f"resnet{8 + 6 * k}"] = [worse], [better]
        claims.append(Worse(f"claim {k}", "crafted", f"plain{8 + 6 * k}", f"resnet{8 + 6 * k}"))
    return claims, runs_of(errors, test_images=10_000, classes=10)


def test_a_claim_that_passes_alone_fails_holm_over_six() -> None:
    from scipy.stats import norm

    z_alone = norm.isf(0.02 / 2)  # two-sided p = 0.02
    claims, results = family([z_alone, 0.5, 0.6, 0.7, 0.8, 0.9])
    alone = claims[0].evaluate(results, TOL)
    assert alone.verdict == "reproduced" and alone.p_value == pytest.approx(0.02, rel=1e-4) and alone.threshold == 0.05
    held = judge(claims, results, TOL)
    assert held[0].verdict == "within noise" and held[0].threshold == pytest.approx(0.05 / 6)
    assert held[0].noise > held[0].margin > alone.noise  # the noise at Holm's level: t(1 - 0.05/12) x SE
    assert held[0].critical == pytest.approx(norm.isf(0.05 / 12), rel=1e-4)
    assert "Holm: p-value 1 of 6, tested at 0.05/6" in held[0].tolerance
    assert judge(claims, results, TOL | {"holm": False})[0].verdict == "reproduced"


def test_holm_stops_at_the_first_claim_it_keeps() -> None:
    """p-values about 0.001, 0.03 and 0.04 over three claims: 0.001 <= 0.05/3 passes, 0.03 > 0.05/2 stops the
    procedure, and 0.04, below its own 0.05, is within noise because of it."""
    from scipy.stats import norm

    claims, results = family([norm.isf(p / 2) for p in (0.04, 0.001, 0.03)])
    verdicts = judge(claims, results, TOL)
    assert [v.verdict for v in verdicts] == ["within noise", "reproduced", "within noise"]
    assert [v.threshold for v in verdicts] == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])
    assert verdicts[0].margin > verdicts[0].noise  # beyond its own level's noise, yet kept
    assert "Holm stopped at a smaller p-value above its threshold" in verdicts[0].evidence
    assert "Holm stopped" not in verdicts[2].evidence  # above its own threshold: within noise anyway
    # Undetermined and not-run claims have no p-value and are no part of the family.
    unknown = runs_of({"plain50": [0.3], "resnet50": [0.1]}, test_images=None, classes=10)
    mixed = ExperimentResults("x", "cifar10", True, {**results.models, **unknown.models})
    extra = [Worse("undetermined", "crafted", "plain50", "resnet50"), Worse("not run", "crafted", "plain2", "resnet2")]
    verdicts = judge([*claims, *extra], mixed, TOL)
    assert [v.verdict for v in verdicts[3:]] == ["undetermined", "not run"]
    assert [v.threshold for v in verdicts[:3]] == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])  # a family of three


# ------------------------------------------------------------------------------------- never the best seed
SEED_STD = 0.01  # one point: the best seeds of the two skews are 1/√3 points apart


def skewed_seeds(mean: float, step: float, low: bool) -> list[float]:
    """Three seeds with this mean and a sample std of `step`, their minimum far below the mean (`low`) or close to
    it: the same mean, std and count, different best seeds."""
    shape = (-2, 1, 1) if low else (2, -1, -1)
    return [mean + step * k / math.sqrt(3) for k in shape]


def seeded_results(name: str, models: list[str], low: bool) -> ExperimentResults:
    """Three seeds of every model of an experiment, around errors that leave each claim decided either way."""
    classes = 100 if "cifar100" in name else 10
    groups = {}
    for index, model in enumerate(models):
        train, test = 0.05 + 0.013 * index + 0.001 * index**2, 0.09 + 0.011 * index + 0.0013 * index**2  # no ties
        trains, tests = skewed_seeds(train, SEED_STD, low), skewed_seeds(test, SEED_STD, low)
        runs = []
        for seed, (tr, te) in enumerate(zip(trains, tests, strict=True)):
            metrics = {"train_error": tr, "test_error": te, "top1_accuracy": 1 - te, "top5_accuracy": 1 - te / 3}
            metrics |= {"train_images": 50_000, "test_images": 10_000}
            metrics["per_class_accuracy"] = {str(c): 1 - te for c in range(classes)}
            runs.append(RunResult(model, seed, Path("."), metrics, None))
        groups[model] = ModelRuns(model, [0, 1, 2], runs)
    return ExperimentResults(name, "cifar10", True, groups)


def test_no_verdict_reads_the_best_seed() -> None:
    """Every claim of every experiment, judged on seeds with the same mean, std and count per model but best seeds
    0.58 points apart (a Near claim's tolerance is 0.5): the verdicts, evidence, margins, noise and p-values
    included, are identical."""
    config = load_config(REPO / "config.yaml")
    refs = load_references()
    judged = 0
    for name in REGISTRY:
        models = list(config["experiments"][name]["models"])
        claims = experiment_claims(name, models, refs)
        low, high = (
            [replace(v, p_value=v.p_value and round(v.p_value, 9)) for v in judge(claims, runs, refs["tolerances"])]
            for runs in (seeded_results(name, models, skew) for skew in (True, False))
        )
        assert low == high, name
        judged += len(claims)
    assert judged > 30
    # The seeds do differ in their best: a Near claim reading it would have told them apart.
    low, high = (seeded_results("x", ["resnet110"], skew).get("resnet110").stat("test_error") for skew in (1, 0))
    assert (low.mean, low.std, low.n) == pytest.approx((high.mean, high.std, high.n))
    assert high.best - low.best == pytest.approx(SEED_STD / math.sqrt(3))
