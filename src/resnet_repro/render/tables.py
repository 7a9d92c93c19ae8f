"""The tables each experiment shows (results, Table 6, Tables 2 and 3, the review's, provenance, verdict), as data."""

from __future__ import annotations

import math
from typing import Any

from ..plan import reads_image_folder
from ..settings import load_schedules
from .claims import HOLM_RULE, NOT_RUN, UNDETERMINED, VERDICTS, Verdict
from .formats import DASH, Column, Table, fmt, pm, rounded
from .names import is_plain, model_depth, model_label
from .references import cite, deviation_note
from .results import ExperimentResults, ModelRuns


def cifar10_deviations(results: ExperimentResults) -> tuple[str, ...]:
    """The deviations (references.yaml `deviations`) behind any number of an experiment with the paper's CIFAR-10
    protocol: BN over one device's batch, and the image-folder copy when the experiment reads one."""
    return (*(("image_folder_copy",) if reads_image_folder(results.dataset) else ()), "bn_batch")


def deviation_notes(refs: dict, keys: tuple[str, ...]) -> list[str]:
    return [deviation_note(refs, key) for key in keys]


def _seeds_note(group: ModelRuns | None) -> str:
    if group is None or not group.runs:
        return NOT_RUN
    if group.missing:
        return f"{len(group.runs)} of {len(group.seeds)} seeds"
    return f"{len(group.runs)}"


def _error_fields(group: ModelRuns | None, best: bool = False) -> dict:
    """Test error mean and std over seeds (%), and with `best` the lowest over seeds (a selection on the test set:
    shown only beside a paper's own best of several runs, never judged)."""
    s = group.stat("test_error") if group else None
    fields: dict[str, Any] = {"error_mean": None, "error_std": None, "runs": 0}
    if s is not None:
        fields = {"error_mean": rounded(100 * s.mean), "error_std": rounded(100 * s.std), "runs": s.n}
    if best:
        fields["error_best"] = rounded(100 * s.best) if s else None
    return fields


def _params_m(group: ModelRuns | None) -> float | None:
    s = group.stat("parameters") if group and group.runs else None
    return None if s is None else round(s.mean / 1e6, 4)


def _seed_list(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def precision_notes(results: ExperimentResults) -> list[str]:
    """A note when the experiment's runs were trained in more than one precision (a machine with fast bf16 trains
    `precision: auto` runs in bf16, one without in fp32): which seeds of which model ran in which, since a model's
    mean and std pool them. Nothing when all runs share one precision."""
    by_model: dict[str, dict[str, list[int]]] = {}
    for group in results.models.values():
        for run in sorted(group.runs, key=lambda r: r.seed):
            precision = (run.metrics.get("provenance") or {}).get("train_precision")
            if precision:
                by_model.setdefault(group.model, {}).setdefault(precision, []).append(run.seed)
    if len({p for precisions in by_model.values() for p in precisions}) < 2:
        return []
    in_seed_order = {
        model: sorted(precisions.items(), key=lambda item: item[1]) for model, precisions in by_model.items()
    }
    parts = [
        f"{model_label(model)} " + ", ".join(f"{_seed_list(seeds)} {precision}" for precision, seeds in precisions)
        for model, precisions in in_seed_order.items()
    ]
    mixed = [model_label(m) for m, precisions in by_model.items() if len(precisions) > 1]
    pooled = f" {', '.join(mixed)}: mean and std pool both precisions." if mixed else ""
    return [f"Precision differs between runs: {'; '.join(parts)}.{pooled}"]


def results_table(results: ExperimentResults, notes: list[str] | None = None) -> Table:
    """One row per model: layers, parameters, final training error, test error (mean ± std), top-5; `notes`: more
    notes (the deviations from the paper behind the numbers)."""
    records = []
    for group in results.models.values():
        record = {"model": group.model, "label": model_label(group.model), "layers": model_depth(group.model)}
        record["params_m"] = _params_m(group)
        train = group.stat("train_error")
        record["train_error_mean"] = rounded(100 * train.mean) if train else None
        record.update(_error_fields(group))
        top5 = group.stat("top5_error")
        record["top5_error_mean"] = rounded(100 * top5.mean) if top5 else None
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
            "error_mean",
            "error_std",
            "top5_error_mean",
            "runs",
            "seeds",
        ],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: fmt(r["params_m"], 3, "M")),
            Column("Train error (%)", lambda r: fmt(r["train_error_mean"])),
            Column("Test error (%), mean ± std", lambda r: pm(r["error_mean"], r["error_std"], r["runs"])),
            Column("Top-5 error (%)", lambda r: fmt(r["top5_error_mean"])),
            Column("Seeds", lambda r: r["seeds"]),
        ],
        records,
        [
            "Train error: the last epoch's training error (mean over seeds). Std is over seeds (n-1).",
            *precision_notes(results),
            *(notes or []),
        ],
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
                "train_error_mean": rounded(100 * train.mean) if train else None,
                "train_error_std": rounded(100 * train.std) if train else None,
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
            "error_mean",
            "error_std",
            "runs",
            "error_paper_best",
            "seeds",
        ],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: fmt(r["params_m"], 3, "M")),
            Column("Train error, mean ± std", lambda r: pm(r["train_error_mean"], r["train_error_std"], r["runs"])),
            Column("Test error, mean ± std", lambda r: pm(r["error_mean"], r["error_std"], r["runs"])),
            Column(f"Paper ({paper_iterations // 1000}k it.)", lambda r: fmt(r["error_paper_best"])),
            Column("Seeds", lambda r: r["seeds"]),
        ],
        records,
        [
            (
                f"Ours: {iterations:,} iterations, the paper's protocol (SGD 0.9, weight decay 1e-4, batch 128, lr 0.1 "
                f"divided by 10 twice) at 1/{paper_iterations / iterations:,.0f} of its length. Mean ± std "
                "(n-1) over seeds, what the verdict judges; train error is the last full epoch's."
            )
            if iterations
            else "Ours: no run has finished yet.",
            *precision_notes(results),
            f"Paper: {cite(refs, 'table6')}, its one printed number per net ({paper_iterations:,} iterations); it "
            "prints none for the plain nets.",
            *deviation_notes(refs, (*cifar10_deviations(results), "short_schedule")),
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
    """Provenance of every run: code commit, torch, device, processor and runtime, threads, and wall time
    (training)."""
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
                    "wall_min": rounded(wall / 60, 2) if wall is not None else None,
                    "images_per_s": rounded(history["images_per_s"][-1], 1) if history.get("images_per_s") else None,
                    "threads": int(threads) if threads is not None else None,
                    "device": prov.get("train_device"),
                    "processor": prov.get("train_processor"),
                    "runtime": prov.get("train_runtime"),
                    "torch": prov.get("torch_version"),
                    "commit": (prov.get("git_commit") or "")[:12] or None,
                }
            )
    total = math.fsum(r["wall_min"] or 0 for r in records)
    return Table(
        "runs",
        f"{results.name}: provenance and training wall time per run (total {total:.1f} min)",
        [
            "model",
            "seed",
            "iterations",
            "wall_min",
            "images_per_s",
            "threads",
            "device",
            "processor",
            "runtime",
            "torch",
            "commit",
        ],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Seed", lambda r: str(r["seed"])),
            Column("Iterations", lambda r: fmt(r["iterations"], 0)),
            Column("Wall time (min)", lambda r: fmt(r["wall_min"], 1)),
            Column("img/s (last interval)", lambda r: fmt(r["images_per_s"], 0)),
            Column("Threads", lambda r: fmt(r["threads"], 0)),
            Column("Device", lambda r: r["device"] or DASH, "l"),
            Column("Processor", lambda r: r["processor"] or DASH, "l"),
            Column("Runtime", lambda r: r["runtime"] or DASH, "l"),
            Column("torch", lambda r: r["torch"] or DASH, "l"),
            Column("Commit", lambda r: r["commit"] or DASH, "l"),
        ],
        records,
        [
            "Wall time: the trainer's own clock from start to the last evaluation, evaluations and any "
            "compilation included (history.csv, wall_s); data preparation and the evaluate step are not counted.",
            *precision_notes(results),
        ],
    )


def table6(results: ExperimentResults, refs: dict) -> Table:
    """Paper Table 6: the paper's rows (with ours beside the ResNets) and our plain nets. Our best seed is shown
    only where the paper prints a best of several runs (ResNet-110), beside it."""
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
            **_error_fields(group, best=model is not None and "mean" in row),
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
            Column("Layers", lambda r: fmt(r["layers"], 0)),
            Column("Params (paper)", lambda r: fmt(r["params_m_paper"], 2, "M")),
            Column("Params (ours)", lambda r: fmt(r["params_m_ours"], 2, "M")),
            Column("Error, paper", paper),
            Column("Ours mean ± std", lambda r: pm(r["error_mean"], r["error_std"], r["runs"])),
            Column("Ours, best of seeds", lambda r: fmt(r.get("error_best"))),
            Column("Status", lambda r: r["status"], "l"),
        ],
        records,
        [
            f"Paper: {cite(refs, 'table6')}. Where it prints 'best (mean ± std)' ("
            + ", ".join(f"{r['method']}-{r['layers']}: {r['runs']} runs" for r in refs["table6"]["rows"] if "runs" in r)
            + ") the best is over its runs.",
            "Ours: mean ± std (n-1) over seeds, what the verdict judges. 'Best of seeds' is the lowest test error "
            "over our seeds, shown only where the paper prints a best of several runs: it selects on the test set "
            "(optimistic), so no verdict reads it. Literature rows are reported in the paper, not run here.",
            *deviation_notes(refs, cifar10_deviations(results)),
        ],
    )


def fc_table(results: ExperimentResults, refs: dict, regime: str) -> Table:
    """The review's FC table: ours (mean over seeds) and the review's, one row each per model; `regime`
    (references.yaml `regimes`): which regime ours ran in, named in the title and described in a note."""
    metrics = (
        ("train_loss", "train_loss"),
        ("val_loss", "test_loss"),
        ("train_accuracy", "train_accuracy"),
        ("val_accuracy", "test_accuracy"),
    )
    records = []
    for row in refs["review_fc"]["rows"]:
        if row["model"] not in results.models:
            continue  # a net this experiment does not train (the record's FC-only experiment has no ResNet-18)
        group = results.models[row["model"]]
        ours: dict[str, Any] = {"model": row["model"], "label": row["label"], "source": "ours"}
        for key, metric in metrics:
            s = group.stat(metric)
            ours[key] = rounded(s.mean) if s else None
        ours["runs"] = len(group.runs)
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
    nets = " / ".join(dict.fromkeys(r["label"] for r in records))
    return Table(
        "fc_table",
        f"{nets} on CIFAR-10, ours in {refs['regimes'][regime]['label']} beside the review's",
        ["model", "source", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "runs"],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Source", lambda r: r["source"], "l"),
            Column("Train loss", lambda r: fmt(r["train_loss"], 4)),
            Column("Val loss", lambda r: fmt(r["val_loss"], 4)),
            Column("Train acc.", lambda r: fmt(r["train_accuracy"], 4)),
            Column("Val acc.", lambda r: fmt(r["val_accuracy"], 4)),
            Column("Seeds", lambda r: DASH if r["runs"] is None else str(r["runs"])),
        ],
        records,
        [
            f"Review: {cite(refs, 'review_fc')}.",
            "Ours: last epoch's training loss/accuracy; 'val' is our held-out evaluation split (metrics.json "
            "`split`); mean over seeds.",
            refs["regimes"][regime]["note"],
        ],
    )


def cifar100_table(results: ExperimentResults, refs: dict, regime: str) -> Table:
    """CIFAR-100 top-1/top-5 error beside a published reference run; `regime` as for `fc_table`."""
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
                "top1_mean": rounded(100 * top1.mean) if top1 else None,
                "top1_std": rounded(100 * top1.std) if top1 else None,
                "top5_mean": rounded(100 * top5.mean) if top5 else None,
                "runs": top1.n if top1 else 0,
                "ref_params_m": ref.get("params_m"),
                "ref_top1": ref.get("top1"),
                "ref_top5": ref.get("top5"),
                "status": _seeds_note(group),
            }
        )
    return Table(
        "cifar100_table",
        f"CIFAR-100: top-1 / top-5 error (%), ours in {refs['regimes'][regime]['label']} beside a published "
        "reference run",
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
            Column("Params", lambda r: fmt(r["params_m"], 1, "M")),
            Column("Top-1 err.", lambda r: pm(r["top1_mean"], r["top1_std"], r["runs"])),
            Column("Top-5 err.", lambda r: fmt(r["top5_mean"])),
            Column("Ref. params", lambda r: fmt(r["ref_params_m"], 1, "M")),
            Column("Ref. top-1", lambda r: fmt(r["ref_top1"])),
            Column("Ref. top-5", lambda r: fmt(r["ref_top5"])),
            Column("Seeds", lambda r: r["status"], "l"),
        ],
        records,
        [
            f"Reference run: {cite(refs, 'cifar100_reference')}. PlainCNN nets have no reference run.",
            refs["regimes"][regime]["note"],
        ],
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
                "params_m": _params_m(group),
                "top1_mean": rounded(100 * s.mean) if s else None,
                "runs": s.n if s else 0,
                "paper_top1": row["top1"],
                "status": _seeds_note(group) if results.enabled else NOT_RUN,
            }
        )
    return Table(
        "table2",
        "Table 2: top-1 error on ImageNet validation (%)",
        ["model", "params_m", "top1_mean", "runs", "paper_top1", "status"],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: fmt(r["params_m"], 2, "M")),
            Column("Ours (10-crop)", lambda r: fmt(r["top1_mean"])),
            Column("Paper (10-crop)", lambda r: fmt(r["paper_top1"])),
            Column("Seeds", lambda r: r["status"], "l"),
        ],
        records,
        [
            f"Paper: {cite(refs, 'table2')}.",
            "ResNets with option-A shortcuts (zero-padded identity where dimensions grow): no extra parameters "
            "over their plain counterparts, as in the paper.",
            *deviation_notes(refs, ("imagenet_milestones",)),
        ],
    )


def table3(results: ExperimentResults, refs: dict) -> Table:
    """Paper Table 3: the shortcut options on ResNet-34 and the deeper bottleneck nets, top-1 and top-5 error
    (10-crop) and parameters, ours beside the paper's."""
    records = []
    for row in refs["table3"]["rows"]:
        group = results.models.get(row["model"])
        top1, top5 = (group.stat(metric) if group else None for metric in ("test_error", "top5_error"))
        records.append(
            {
                "model": row["model"],
                "label": row["label"],
                "params_m": _params_m(group),
                "top1_mean": rounded(100 * top1.mean) if top1 else None,
                "top5_mean": rounded(100 * top5.mean) if top5 else None,
                "runs": top1.n if top1 else 0,
                "paper_top1": row["top1"],
                "paper_top5": row["top5"],
                "status": _seeds_note(group) if results.enabled else NOT_RUN,
            }
        )
    return Table(
        "table3",
        "Table 3: top-1 / top-5 error on ImageNet validation (%, 10-crop)",
        ["model", "params_m", "top1_mean", "top5_mean", "runs", "paper_top1", "paper_top5", "status"],
        [
            Column("Model", lambda r: r["label"], "l"),
            Column("Params", lambda r: fmt(r["params_m"], 2, "M")),
            Column("Top-1, ours", lambda r: fmt(r["top1_mean"])),
            Column("Top-1, paper", lambda r: fmt(r["paper_top1"])),
            Column("Top-5, ours", lambda r: fmt(r["top5_mean"])),
            Column("Top-5, paper", lambda r: fmt(r["paper_top5"])),
            Column("Seeds", lambda r: r["status"], "l"),
        ],
        records,
        [
            f"Paper: {cite(refs, 'table3')}.",
            "ResNet-34 A: zero-padded identity shortcuts where dimensions grow (no extra parameters); B: projections "
            "there, identity elsewhere; C: projections on every shortcut. ResNet-50/101/152: bottleneck blocks, "
            "option B. Ours: mean over seeds.",
            *deviation_notes(refs, ("imagenet_milestones",)),
        ],
    )


def _p_value(value: float | None) -> str:
    if value is None:
        return DASH
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def verdict_table(
    verdicts: list[Verdict],
    holm: bool,
    name: str = "verdict",
    title: str = "Reproduction verdict",
    brief: bool = False,
) -> Table:
    """One row per claim: evidence, margin, noise, seeds, df, critical value, p-value and the level it is tested at,
    rule and verdict. `holm`: whether the ordering claims were tested as one family (the notes say so). `brief`: the
    numbers alone, without source, evidence and rule columns (the CSV keeps them), for an overview."""
    records = [
        vars(v)
        | {
            "p_value": None if v.p_value is None else float(f"{v.p_value:.4g}"),
            "threshold": None if v.threshold is None else float(f"{v.threshold:.6g}"),
        }
        for v in verdicts
    ]
    counts = {k: sum(v.verdict == k for v in verdicts) for k in VERDICTS}
    show_experiment = len({v.experiment for v in verdicts}) > 1
    columns = [Column("Experiment", lambda r: r["experiment"], "l")] if show_experiment else []
    columns.append(Column("Claim", lambda r: r["claim"], "l"))
    if not brief:
        columns += [
            Column("Source", lambda r: r["source"], "l"),
            Column("Evidence (our runs)", lambda r: r["evidence"], "l"),
        ]
    columns += [
        Column("Margin (points)", lambda r: fmt(r["margin"], 2)),
        Column("Noise (points)", lambda r: fmt(r["noise"], 2)),
        Column("Seeds", lambda r: r["seeds"] or DASH),
        Column("df", lambda r: "∞" if r["df"] == math.inf else fmt(r["df"], 1)),
        Column("Critical value", lambda r: fmt(r["critical"], 2)),
        Column("p-value", lambda r: _p_value(r["p_value"])),
        Column("Tested at", lambda r: DASH if r["threshold"] is None else f"{r['threshold']:.4g}"),
        *([] if brief else [Column("Rule", lambda r: r["tolerance"], "l")]),
        Column("Verdict", lambda r: r["verdict"], "l"),
    ]
    family = (
        HOLM_RULE
        if holm
        else "Each ordering claim is tested alone at 1 - confidence: no family-wise control (tolerances.holm off)."
    )
    return Table(
        name,
        title,
        [
            "experiment",
            "claim",
            "source",
            "evidence",
            "margin",
            "noise",
            "seeds",
            "df",
            "critical",
            "p_value",
            "threshold",
            "tolerance",
            "verdict",
        ],
        columns,
        records,
        [
            ", ".join(f"{counts[k]} {k}" for k in VERDICTS) + ".",
            "Ordering and chance claims: reproduced when the margin exceeds the noise, not reproduced when it is "
            "beyond the noise the other way, within noise otherwise. The noise is the critical value of Student's t at "
            "the df shown times the standard error of the difference (of the one mean, for a chance claim; the Rule "
            "column says how both are estimated); equivalently, the two-sided p-value is at or below the level it is "
            "tested at.",
            family,
            f"'{UNDETERMINED}': a run does not say how many images an error rests on, so its noise cannot be "
            f"computed. A claim whose runs (any of their seeds) have not happened is '{NOT_RUN}'. Neither is a pass.",
        ],
    )
