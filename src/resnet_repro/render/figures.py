"""The figures: error curves, the review's loss/accuracy curves and Fig. 7's layer responses (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..paths import FIGURE_FORMATS
from ..runfiles import atomic_writer
from .formats import DASH
from .names import is_plain, is_residual, model_depth, model_label
from .results import ExperimentResults, ModelRuns

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
    paths = []
    for fmt in FIGURE_FORMATS:
        path = out_base.with_suffix(f".{fmt}")
        # No timestamps in the files: rerendering the same data gives the same bytes.
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_writer(path) as handle:
            fig.savefig(handle, format=fmt, dpi=200, metadata=metadata)
        paths.append(path)
    _pyplot().close(fig)
    return paths


# ------------------------------------------------------------------------------ the figures experiments show
def present(models: Iterable[str], wanted: Iterable[str]) -> list[str]:
    models = list(models)
    return [m for m in wanted if m in models]


def degradation_curves(results: ExperimentResults, out_base: Path) -> list[Path]:
    """Paper Fig. 1: training error (left) and test error (right) of plain-20 and plain-56 (or every model)."""
    pair = present(results.models, ["plain20", "plain56"]) or list(results.models)
    panels = [Panel("training error", pair, ("train_error",)), Panel("test error", pair, ("test_error",))]
    return draw_curves(results, panels, out_base)


def plain_vs_residual_curves(results: ExperimentResults, out_base: Path, split_1202: bool = False) -> list[Path]:
    """Paper Fig. 4 / Fig. 6: plain nets, ResNets and any other nets in their own panels. `split_1202`: ResNet-1202
    beside ResNet-110 in a panel of its own (Fig. 6, right), not among the other ResNets."""
    models = list(results.models)
    plain = [m for m in models if is_plain(m)]
    residual = [m for m in models if is_residual(m)]
    others = [m for m in models if m not in plain and m not in residual]
    if split_1202:
        residual = [m for m in residual if m != "resnet1202"]
    panels = []
    if plain:
        panels.append(Panel("plain", plain))
    if residual:
        panels.append(Panel("ResNet", residual))
    if others:
        panels.append(Panel("other nets", others))
    if split_1202 and "resnet1202" in models:
        panels.append(Panel("ResNet-110 vs ResNet-1202", present(models, ["resnet110", "resnet1202"])))
    if not panels:
        panels = [Panel("no runs", [])]
    x = "iteration" if results.dataset != "cifar100" else "epoch"
    return draw_curves(results, panels, out_base, x=x)


def top1_curves(results: ExperimentResults, out_base: Path) -> list[Path]:
    """Training and test top-1 error per epoch, every model in both panels, one colour each (CIFAR-100, and
    ImageNet Table 3, whose ResNet-34 A/B/C share a depth)."""
    models = list(results.models)
    panels = [
        Panel("training error (top-1)", models, ("train_error",)),
        Panel("test error (top-1)", models, ("test_error",)),
    ]
    return draw_curves(results, panels, out_base, x="epoch", by_depth=False)
