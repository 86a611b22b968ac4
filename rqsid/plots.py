"""Pictures of a distribution report (`rqsid.metrics.distribution_report`): the hourglass, made visible.

Pure matplotlib on the Agg canvas (no pyplot, no global backend switch), so it runs headless and
in worker processes. Each `plot_*` writes a PNG and returns its path; `*_figure` builds the Figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

Report = Mapping[str, Any]
_DPI = 110


def _in_play_counts(layer: Mapping[str, Any]) -> np.ndarray:
    """Counts of the codes still in play, ascending. Retired codes (pruned) have count 0 and are
    left out, as in the report's Gini; unused live codes stay as zeros."""
    counts = np.sort(np.asarray(layer["counts"], dtype=np.float64))
    return counts[int(layer.get("n_removed", 0)):]


def lorenz_curve(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of codes, share of items), both from 0 to 1, codes from least to most used."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))
    total = counts.sum()
    x = np.linspace(0.0, 1.0, len(counts) + 1)
    y = np.concatenate([[0.0], np.cumsum(counts) / total]) if total > 0 else x
    return x, y


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _dropped(ax, layer: Mapping[str, Any]) -> None:
    ax.text(0.5, 0.5, "layer dropped\n(no item keeps a token)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------- token frequencies


_STYLES = ("-", "--", ":", "-.")


def _frequency_panel(ax, layer: Mapping[str, Any], label: str | None = None, style: int = 0) -> None:
    desc = _in_play_counts(layer)[::-1]
    used = desc[desc > 0]
    ranks = np.arange(1, len(used) + 1)
    ax.step(ranks, used, where="mid", label=label, linewidth=1.4, linestyle=_STYLES[style % len(_STYLES)])
    ax.set_yscale("log")
    ax.set_xlim(0, len(layer["counts"]) + 1)
    ax.set_xlabel("token rank (most frequent first)")
    ax.grid(True, which="major", alpha=0.3)


def token_frequency_figure(report: Report, title: str = "") -> Figure:
    layers = report["layers"]
    figure = Figure(figsize=(4.2 * len(layers), 3.6), layout="constrained")
    axes = figure.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=False):
        if not layer["n_items"]:
            _dropped(ax, layer)
        else:
            _frequency_panel(ax, layer)
            ax.axhline(layer["n_items"] / max(layer["k"], 1), color="grey", linestyle=":", linewidth=1,
                       label="uniform")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"layer {layer['level']}: Gini {_fmt(layer['gini'])}, "
                     f"top share {_fmt(layer['max_share'])}\nused {_used(layer)} of {layer['k']} codes",
                     fontsize=9)
    axes[0].set_ylabel("items per token (log)")
    figure.suptitle(title or f"token frequencies per layer ({report['n_items']} items)")
    return figure


def _used(layer: Mapping[str, Any]) -> int:
    return int((np.asarray(layer["counts"]) > 0).sum())


def plot_token_frequencies(report: Report, path: str | Path, title: str = "") -> Path:
    """One panel per layer: tokens sorted by how many items they hold, on a log scale."""
    return _save(token_frequency_figure(report, title), path)


# ---------------------------------------------------------------- Lorenz curves


def lorenz_figure(report: Report, title: str = "") -> Figure:
    figure = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="equality")
    for layer in report["layers"]:
        if not layer["n_items"]:
            continue
        x, y = lorenz_curve(_in_play_counts(layer))
        ax.plot(x, y, linewidth=1.6, label=f"layer {layer['level']} (Gini {_fmt(layer['gini'])})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("share of codes (least used first)")
    ax.set_ylabel("share of items")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"Lorenz curves per layer ({report['n_items']} items)")
    return figure


def plot_lorenz(report: Report, path: str | Path, title: str = "") -> Path:
    """Lorenz curves of each layer's token counts; the further below the diagonal, the more concentrated."""
    return _save(lorenz_figure(report, title), path)


# ---------------------------------------------------------------- several reports


def side_by_side_figure(reports: Mapping[str, Report], title: str = "") -> Figure:
    levels = max(len(r["layers"]) for r in reports.values())
    figure = Figure(figsize=(4.2 * levels, 7.0), layout="constrained")
    grid = figure.add_gridspec(2, levels, height_ratios=[1.3, 1])
    for index in range(levels):
        ax = figure.add_subplot(grid[0, index])
        for style, (name, report) in enumerate(reports.items()):
            layers = report["layers"]
            if index < len(layers) and layers[index]["n_items"]:
                _frequency_panel(ax, layers[index], label=name, style=style)
        ax.set_title(f"layer {index + 1}: items per token", fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
    _gini_bars(figure.add_subplot(grid[1, :]), reports, levels)
    figure.suptitle(title or "SID distributions side by side")
    return figure


def _gini_bars(ax, reports: Mapping[str, Report], levels: int) -> None:
    width = 0.8 / len(reports)
    for offset, (name, report) in enumerate(reports.items()):
        ginis = [layer["gini"] if layer["gini"] is not None else np.nan for layer in report["layers"]]
        ginis += [np.nan] * (levels - len(ginis))
        x = np.arange(1, levels + 1) + (offset - (len(reports) - 1) / 2) * width
        bars = ax.bar(x, np.nan_to_num(ginis), width=width, label=f"{name} (collisions {_fmt(report['collision_rate'])})")
        ax.bar_label(bars, labels=["dropped" if np.isnan(g) else f"{g:.2f}" for g in ginis], fontsize=7)
    ax.set_xticks(np.arange(1, levels + 1), [f"layer {n}" for n in range(1, levels + 1)])
    ax.set_ylim(0, 1.3)  # headroom for the legend above the bars
    ax.set_ylabel("Gini")
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(reports), 4))
    ax.grid(True, axis="y", alpha=0.3)


def plot_side_by_side(reports: Mapping[str, Report], path: str | Path, title: str = "") -> Path:
    """Token frequencies per layer with one line per report, and each layer's Gini per report."""
    if not reports:
        from rqsid import RqsidError

        raise RqsidError("plot_side_by_side needs at least one report")
    return _save(side_by_side_figure(reports, title), path)
