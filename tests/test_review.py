"""The review's experiments as the review ran them (no augmentation, fp32) beside the paper's regime (issue 27):
Snakemake plans each with its own schedules, and the FC nets train in fp32 whatever the machine."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_pipeline import make_workspace, snakemake

from resnet_repro.plan import build_plan, load_config

# experiment -> (its schedule, its FC nets' schedule or None, its seeds)
REGIMES = {
    "fc_vs_resnet": ("review_cifar", "review_fc", [0]),
    "review_fc_vs_resnet": ("review_cifar_noaug", "review_fc_noaug", [100]),
    "cifar100": ("review_cifar", None, [0]),
    "review_cifar100": ("review_cifar_noaug", None, [100]),
}
UNAUGMENTED = {"pad": 0, "flip": False}


def planned_training(dry_run: str) -> set[tuple[str, str, int]]:
    """(dataset, model, seed) of every training job a `snakemake -n` output lists."""
    jobs = set()
    for block in dry_run.split("rule ")[1:]:
        if block.startswith("train:"):
            wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", block.split("wildcards:", 1)[1].splitlines()[0]))
            jobs.add((wildcards["dataset"], wildcards["model"], int(wildcards["seed"])))
    return jobs


def test_each_regime_is_configured_as_labelled() -> None:
    plan = build_plan(load_config(REPO / "config.yaml"), check_paths=False)
    assert not set(REGIMES) & set(plan.config["all"])  # the review's experiments stay out of `all`
    for name, (schedule, fc_schedule, seeds) in REGIMES.items():
        runs = plan.experiments[name]
        assert {run.seed for run in runs} == set(seeds), name
        for run in runs:
            expected = fc_schedule if run.model.startswith("fc") else schedule
            assert run.schedule == expected, (name, run.model)
            review = name.startswith("review_")
            assert (run.settings.augment == UNAUGMENTED) is review, (name, run.model)  # None: the dataset's crops
            assert run.settings.precision == ("fp32" if review or run.model.startswith("fc") else "auto")


@pytest.mark.slow
def test_snakemake_plans_the_review_variants_with_their_schedules(tmp_path: Path) -> None:
    """`snakemake render_<experiment> -n` on the shipped config plans each experiment's training jobs, and the
    stage each job runs (dvc.yaml, which that Snakemake run writes) takes the experiment's schedules."""
    workspace = make_workspace(tmp_path / "ws", load_config(REPO / "config.yaml"))
    stages = None
    for name, (schedule, fc_schedule, seeds) in REGIMES.items():
        models = list(yaml.safe_load((workspace / "config.yaml").read_text())["experiments"][name]["models"])
        dataset = "cifar100" if "cifar100" in name else "cifar10"
        out = snakemake(workspace, f"render_{name}", "-n").stdout
        assert planned_training(out) == {(dataset, m, s) for m in models for s in seeds}, name
        stages = stages or yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
        for model in models:
            settings_file = f"results/{dataset}/{model}/seed{seeds[0]}/settings.json"
            stage = stages[f"train-{dataset}-{model}-seed{seeds[0]}"]
            assert f"--settings {settings_file} " in stage["cmd"], stage["cmd"]
            assert settings_file in stage["params"][0], stage["params"]  # DVC tracks its values
            run = json.loads((workspace / settings_file).read_text())  # written as that Snakemake run parsed
            assert run["schedule"] == (fc_schedule if model.startswith("fc") else schedule), (name, model, run)
            review = name.startswith("review_")
            assert (run["settings"]["augment"] == UNAUGMENTED) is review, (name, model)


def test_fc_nets_train_in_fp32_on_a_bf16_machine(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU with native bf16 (simulated: this one may have none) `precision: auto` trains in bf16, but the FC
    schedules ask for fp32, and model.pt and the evaluation's provenance say so."""
    import torch

    from resnet_repro import runtime
    from resnet_repro.evaluate import evaluate
    from resnet_repro.train import train

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    plan = build_plan(load_config(REPO / "config.yaml"), check_paths=False)
    short = {"iterations": 8, "milestones": (), "eval_every": 4, "compile": "off"}  # a handful of steps
    recorded = {}
    for name, seed in (("fc_vs_resnet", 0), ("review_fc_vs_resnet", 100), ("auto", 0)):
        run = plan.run("cifar10", "fc20", seed)
        settings = dataclasses.replace(run.settings, **short, **({"precision": "auto"} if name == "auto" else {}))
        out = tmp_path / name
        model_file = train(dataclasses.replace(run, settings=settings), digits_dir, out, "cpu")
        recorded[name] = torch.load(model_file, weights_only=True)["runtime"]
        evaluate(model_file, digits_dir, out / "metrics.json", "cpu")
        recorded[f"{name} evaluation"] = json.loads((out / "details.json").read_text())["provenance"]
    assert recorded["auto"]["precision"] == "bf16"  # the simulated machine does have fast bf16
    assert recorded["auto evaluation"]["train_precision"] == "bf16"
    assert recorded["auto evaluation"]["train_processor"] == runtime.processor_name(torch.device("cpu"))
    for name in ("fc_vs_resnet", "review_fc_vs_resnet"):
        assert recorded[name]["precision"] == "fp32" and recorded[name]["note"].startswith("fp32 (requested)")
        provenance = recorded[f"{name} evaluation"]
        assert provenance["train_runtime"].startswith("fp32 (requested)") and provenance["train_precision"] == "fp32"
        assert provenance["eval_runtime"].startswith("fp32 (as trained)")
        assert provenance["settings"]["precision"] == "fp32"
