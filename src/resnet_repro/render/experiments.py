"""The registry of experiments: for each, the figures and tables it renders and the claims it judges.

An experiment is one entry of REGISTRY: its artifacts (name, report caption and label, how its files are written)
and its claims. An experiment without an entry, such as `demo` or one a user adds to config.yaml, gets GENERIC:
error curves, Fig. 7 when it trains 6n+2 CIFAR nets, a results table, and the paper's claims about whichever
plain/residual pairs it trains. Every experiment also gets the verdict table of its claims (VERDICT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..plan import Plan
from .claims import (
    PAPER_FIG1,
    PAPER_FIG6,
    PAPER_T2,
    PAPER_T6,
    AtChance,
    Claim,
    Monotone,
    Near,
    Verdict,
    Worse,
    generic_claims,
    judge,
)
from .figures import (
    degradation_curves,
    draw_loss_accuracy,
    draw_responses,
    plain_vs_residual_curves,
    top1_curves,
)
from .formats import Table, write_table
from .names import is_cifar_6n2, model_depth, model_label
from .results import ExperimentResults, config_models
from .tables import (
    cifar10_deviations,
    cifar100_table,
    deviation_notes,
    fc_table,
    results_table,
    runs_table,
    short_table,
    table2,
    table3,
    table6,
    verdict_table,
)

SHORT = "cifar10_short"  # the paper's CIFAR-10 protocol at a fraction of its length (schedule cifar_short)
FC_RECORD = "cifar10_fc"  # the review's FC nets, several seeds (fc_vs_resnet's FC runs alone)
RECORD = (SHORT, FC_RECORD)  # the results of record: committed, and shown first in the README


@dataclass(frozen=True)
class Rendering:
    """What an artifact is written from: the experiment's results, the reference numbers, its output folder."""

    plan: Plan
    results: ExperimentResults
    refs: dict
    out: Path  # results/<experiment>: figures/ and tables/ go below


@dataclass(frozen=True)
class Artifact:
    name: str  # file stem: figures/<name>.png or tables/<name>.csv
    kind: str  # "figure" or "table"
    caption: str  # workflow/report/<caption>.rst
    label: str  # short title shown in the report
    write: Callable[[Rendering], list[Path]] = field(repr=False, compare=False)
    # The models whose layer responses (responses.json) it draws, from the experiment's enabled models; an
    # artifact with one is rendered only when that list is not empty.
    responses: Callable[[list[str]], list[str]] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Experiment:
    artifacts: tuple[Artifact, ...]  # in report order; the verdict table follows them
    claims: Callable[[list[str], dict], list[Claim]]  # (every model config.yaml names for it, references) -> claims


def figure(name: str, caption: str, label: str, draw: Callable[[ExperimentResults, Path], list[Path]]) -> Artifact:
    """A figure drawn from the results alone, to figures/<name>.{png,pdf}."""
    return Artifact(name, "figure", caption, label, lambda r: draw(r.results, r.out / "figures" / name))


def table(name: str, caption: str, label: str, build: Callable[[Rendering], Table]) -> Artifact:
    """A table, to tables/<its name>.{csv,md,tex,html}."""
    return Artifact(name, "table", caption, label, lambda r: write_table(build(r), r.out))


def fig7_models(models: Iterable[str], paper_depths: tuple[int, ...] = ()) -> list[str]:
    """The nets of Fig. 7: those of `paper_depths` when at least two are present, otherwise every 6n+2 net."""
    nets = [m for m in dict.fromkeys(models) if is_cifar_6n2(m)]
    paper = [m for m in nets if model_depth(m) in paper_depths]
    return paper if len(paper) >= 2 else nets


def fig7(label: str, paper_depths: tuple[int, ...] = ()) -> Artifact:
    """Paper Fig. 7 (std of layer responses) for the experiment's 6n+2 nets; absent when it trains none."""

    def select(models: list[str]) -> list[str]:
        return fig7_models(models, paper_depths)

    def write(r: Rendering) -> list[Path]:
        return draw_responses(r.results, select(list(r.results.models)), r.out / "figures" / "fig7")

    return Artifact("fig7", "figure", "fig7", label, write, responses=select)


def fixed(*claims: Claim) -> Callable[[list[str], dict], list[Claim]]:
    """Claims that do not depend on the config's models or the reference numbers."""
    return lambda models, refs: list(claims)


def judge_experiment(plan: Plan, results: ExperimentResults, refs: dict) -> list[Verdict]:
    """The verdict of every claim of the experiment (all "not run" when config.yaml disables it)."""
    return judge(experiment_claims(results.name, config_models(plan, results.name), refs), results, refs["tolerances"])


def _write_verdict(r: Rendering) -> list[Path]:
    verdicts = judge_experiment(r.plan, r.results, r.refs)
    holm = r.refs["tolerances"]["holm"]
    return write_table(verdict_table(verdicts, holm, title=f"Reproduction verdict: {r.results.name}"), r.out)


VERDICT = Artifact("verdict", "table", "verdict", "Reproduction verdict", _write_verdict)


# ------------------------------------------------------------------------------------------- claims
def _cifar10_depth_claims(models: list[str], refs: dict) -> list[Claim]:
    tol = refs["tolerances"]
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
            # Our mean against the paper's mean where it prints one (ResNet-110, over its runs), else against its
            # one printed number; never the paper's best of several runs against a mean.
            reference, what = (row["mean"], f"mean of {row['runs']} runs") if "mean" in row else (row["best"], "")
            claims.append(
                Near(
                    f"{model_label(row['model'])} mean within {tol['paper_error_points']:g} points of the paper's "
                    f"{reference:.2f}%" + (f" ({what})" if what else ""),
                    PAPER_T6,
                    row["model"],
                    reference=reference,
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


REVIEW_FC, REVIEW_CIFAR100 = "review FC table", "review CIFAR-100"


def _cifar100_claims(models: list[str], refs: dict) -> list[Claim]:
    tol = refs["tolerances"]
    claims: list[Claim] = [
        Worse("ResNet-18 has lower top-1 error than PlainCNN-18", REVIEW_CIFAR100, "cifar_plain18", "cifar_resnet18"),
        Worse("ResNet-34 has lower top-1 error than PlainCNN-34", REVIEW_CIFAR100, "cifar_plain34", "cifar_resnet34"),
        Worse("ResNet-34 has lower top-1 error than ResNet-18", REVIEW_CIFAR100, "cifar_resnet18", "cifar_resnet34"),
        Worse(
            "PlainCNN-34 has higher training error than PlainCNN-18",
            REVIEW_CIFAR100,
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
                tolerance_key="reference_run_points",
            )
        )
    return claims


PAPER_T3 = "paper Table 3"
# Table 3's claims (Sec. 4.1, "Identity vs. Projection Shortcuts" and "Deeper Bottleneck Architectures"), each an
# ordering of top-1 error judged against the noise of the difference. The deeper nets use option B, so ResNet-50 is
# compared with ResNet-34 B.
TABLE3_CLAIMS = (
    Worse('ResNet-34 B is "slightly better" than A (top-1 error)', PAPER_T3, "resnet34", "resnet34_b"),
    Worse('ResNet-34 C is "marginally better" than B (top-1 error)', PAPER_T3, "resnet34_b", "resnet34_c"),
    Worse("ResNet-50 has lower top-1 error than ResNet-34 B", PAPER_T3, "resnet34_b", "resnet50"),
    Worse("ResNet-101 has lower top-1 error than ResNet-50", PAPER_T3, "resnet50", "resnet101"),
    Worse("ResNet-152 has lower top-1 error than ResNet-101", PAPER_T3, "resnet101", "resnet152"),
)


FC_LEARNING_CLAIMS = (
    AtChance("FC-56 does not learn (test accuracy at chance)", REVIEW_FC, "fc56"),
    AtChance("FC-20 learns (test accuracy above chance)", REVIEW_FC, "fc20", above=True),
)
REVIEW_FC_CLAIMS = (
    *FC_LEARNING_CLAIMS,
    Worse("ResNet-18 has lower test error than FC-20", REVIEW_FC, "fc20", "cifar_resnet18"),
)


def regime_label(regime: str) -> str:
    """What the report calls an experiment's regime: "paper" (augmented) or "review" (no augmentation, fp32)."""
    return "the review's regime" if regime == "review" else "the paper's regime"


def fc_experiment(
    regime: str, claims: tuple[Claim, ...] = REVIEW_FC_CLAIMS, extra: tuple[Artifact, ...] = ()
) -> Experiment:
    """The review's FC-20 / FC-56 / ResNet-18 experiment on CIFAR-10, run in `regime` (references.yaml `regimes`),
    judging `claims`, with the `extra` artifacts after its own."""
    return Experiment(
        artifacts=(
            figure(
                "fc_curves",
                "fc_curves",
                f"FC-20 / FC-56 / ResNet-18 curves, {regime_label(regime)}",
                lambda results, base: draw_loss_accuracy(results, list(results.models), base),
            ),
            table(
                "fc_table",
                "fc_table",
                f"The review's FC table, ours in {regime_label(regime)}",
                lambda r: fc_table(r.results, r.refs, regime),
            ),
            *extra,
        ),
        claims=fixed(*claims),
    )


def cifar100_experiment(regime: str) -> Experiment:
    """The review's CIFAR-100 experiment, run in `regime`."""
    return Experiment(
        artifacts=(
            figure(
                "cifar100_curves", "cifar100_curves", f"CIFAR-100 error curves, {regime_label(regime)}", top1_curves
            ),
            table(
                "cifar100_table",
                "cifar100_table",
                f"CIFAR-100: top-1/top-5 error, {regime_label(regime)}",
                lambda r: cifar100_table(r.results, r.refs, regime),
            ),
        ),
        claims=_cifar100_claims,
    )


# ------------------------------------------------------------------------------------------- the registry
FIG7_SHORT_LABEL = "Std of layer responses (as Fig. 7)"
# Where each run of the record was made and how long it took.
RUNS = table("runs", "runs_table", "Provenance and wall time of every run", lambda r: runs_table(r.results))

GENERIC = Experiment(
    artifacts=(
        figure("curves", "curves", "Training and test error", plain_vs_residual_curves),
        fig7(FIG7_SHORT_LABEL),
        table("results", "results_table", "Results", lambda r: results_table(r.results)),
    ),
    claims=lambda models, refs: generic_claims(models),
)

REGISTRY: dict[str, Experiment] = {
    "degradation": Experiment(
        artifacts=(
            figure("fig1", "fig1", "Fig. 1: plain nets, training and test error", degradation_curves),
            table(
                "results",
                "results_table",
                "Results",
                lambda r: results_table(r.results, deviation_notes(r.refs, cifar10_deviations(r.results))),
            ),
        ),
        claims=fixed(
            Worse("plain-56 has higher training error than plain-20", PAPER_FIG1, "plain56", "plain20", "train_error"),
            Worse("plain-56 has higher test error than plain-20", PAPER_FIG1, "plain56", "plain20", "test_error"),
        ),
    ),
    "cifar10_depth": Experiment(
        artifacts=(
            figure(
                "fig6",
                "fig6",
                "Fig. 6: plain vs ResNet on CIFAR-10",
                lambda results, base: plain_vs_residual_curves(results, base, split_1202=True),
            ),
            fig7("Fig. 7: std of layer responses", paper_depths=(20, 56, 110)),
            table("table6", "table6", "Table 6: CIFAR-10 test error", lambda r: table6(r.results, r.refs)),
        ),
        claims=_cifar10_depth_claims,
    ),
    # The review's experiments in the paper's regime (augmented) and, as review_*, in the review's own.
    "fc_vs_resnet": fc_experiment("paper"),
    FC_RECORD: fc_experiment("paper", FC_LEARNING_CLAIMS, extra=(RUNS,)),  # no ResNet-18 to compare with
    "review_fc_vs_resnet": fc_experiment("review"),
    "cifar100": cifar100_experiment("paper"),
    "review_cifar100": cifar100_experiment("review"),
    "imagenet": Experiment(
        artifacts=(
            figure("fig4", "fig4", "Fig. 4: ImageNet training", plain_vs_residual_curves),
            table("table2", "table2", "Table 2", lambda r: table2(r.results, r.refs)),
        ),
        claims=fixed(
            Worse("plain-34 has higher top-1 error than plain-18", PAPER_T2, "plain34", "plain18"),
            Worse("ResNet-34 has lower top-1 error than ResNet-18", PAPER_T2, "resnet18", "resnet34"),
            Worse("ResNet-34 has lower top-1 error than plain-34", PAPER_T2, "plain34", "resnet34"),
        ),
    ),
    "imagenet_table3": Experiment(
        artifacts=(
            figure("table3_curves", "table3_curves", "ImageNet training curves (Table 3's nets)", top1_curves),
            table("table3", "table3", "Table 3", lambda r: table3(r.results, r.refs)),
        ),
        claims=fixed(*TABLE3_CLAIMS),
    ),
    SHORT: Experiment(
        artifacts=(
            figure(
                "fig6",
                "fig6_short",
                "Plain vs ResNet on CIFAR-10, short schedule (as Fig. 6)",
                lambda results, base: plain_vs_residual_curves(results, base, split_1202=True),
            ),
            fig7(FIG7_SHORT_LABEL),
            table("results", "short_table", "Results beside the paper's", lambda r: short_table(r.results, r.refs)),
            RUNS,
        ),
        claims=fixed(
            Worse("plain-56 has higher training error than plain-20", PAPER_FIG1, "plain56", "plain20", "train_error"),
            Worse("plain-56 has higher test error than plain-20", PAPER_FIG1, "plain56", "plain20"),
            Worse("ResNet-56 has lower training error than plain-56", PAPER_FIG6, "plain56", "resnet56", "train_error"),
            Worse("ResNet-56 has lower test error than plain-56", PAPER_FIG6, "plain56", "resnet56"),
            Worse("ResNet-20 has lower training error than plain-20", PAPER_FIG6, "plain20", "resnet20", "train_error"),
            Worse("ResNet-56 has lower test error than ResNet-20", PAPER_T6, "resnet20", "resnet56"),
        ),
    ),
}


def experiment_entry(experiment: str) -> Experiment:
    """The experiment's registry entry; GENERIC for one without."""
    return REGISTRY.get(experiment, GENERIC)


def experiment_claims(experiment: str, models: list[str], refs: dict) -> list[Claim]:
    """The claims judged for an experiment. `models`: every model config.yaml names for it."""
    return experiment_entry(experiment).claims(models, refs)
