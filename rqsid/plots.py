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


# ---------------------------------------------------------------- before and after pruning


def _ranked(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes from most to least used, rank of each code starting at 1)."""
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(1, len(counts) + 1)
    return order, rank


def _before_after_frequencies(ax, before: Mapping[str, Any], after: Mapping[str, Any], removed) -> None:
    counts = np.asarray(before["counts"], dtype=np.float64)
    order, rank = _ranked(counts)
    used = counts[order] > 0
    ax.step(np.arange(1, len(counts) + 1)[used], counts[order][used], where="mid", color="grey", linestyle="--",
            linewidth=1.3, label="before pruning")
    if after["n_items"]:
        kept = _in_play_counts(after)[::-1]
        kept = kept[kept > 0]
        ax.step(np.arange(1, len(kept) + 1), kept, where="mid", color="tab:blue", linewidth=1.5,
                label="after pruning (published)")
    if len(removed):
        gone = np.asarray(removed, dtype=np.int64)
        ax.scatter(rank[gone], np.maximum(counts[gone], 0.8), marker="x", color="tab:red", s=22, zorder=3,
                   label=f"removed by pruning ({len(gone)})")
    ax.set_yscale("log")
    ax.set_xlim(0, len(counts) + 1)
    ax.set_xlabel("token rank (most frequent first)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)


def _before_after_lorenz(ax, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="equality")
    x, y = lorenz_curve(_in_play_counts(before))
    ax.plot(x, y, color="grey", linestyle="--", linewidth=1.4, label=f"before (Gini {_fmt(before['gini'])})")
    if after["n_items"]:
        x, y = lorenz_curve(_in_play_counts(after))
        ax.plot(x, y, color="tab:blue", linewidth=1.6, label=f"after (Gini {_fmt(after['gini'])})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("share of codes (least used first)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def pruning_figure(before: Report, after: Report, removed: Mapping[int, Any] | None = None, title: str = "") -> Figure:
    """One column per layer: token frequencies (top) and Lorenz curves (bottom) of the SIDs before pruning
    (dashed grey) and after it (blue); the tokens that pruning removed are marked on the before curve.
    `removed`: 1-based level -> removed codes (`SidTable.removed_codes()` of the pruned table)."""
    removed = {int(level): list(codes) for level, codes in (removed or {}).items()}
    layers = list(zip(before["layers"], after["layers"], strict=True))
    figure = Figure(figsize=(4.2 * len(layers), 7.4), layout="constrained")
    axes = figure.subplots(2, len(layers), squeeze=False)
    for column, (b, a) in enumerate(layers):
        gone = removed.get(b["level"], [])
        _before_after_frequencies(axes[0, column], b, a, gone)
        _before_after_lorenz(axes[1, column], b, a)
        change = f"{len(gone)} of {b['k']} tokens removed" if gone else "nothing removed"
        after_gini = _fmt(a["gini"]) if a["n_items"] else "dropped"
        axes[0, column].set_title(f"layer {b['level']}: Gini {_fmt(b['gini'])} before -> {after_gini} after\n{change}",
                                  fontsize=9)
    axes[0, 0].set_ylabel("items per token (log)")
    axes[1, 0].set_ylabel("share of items")
    k = sum(len(codes) for codes in removed.values())
    what = f"{k} tokens removed" if k else "no pruning needed (K = 0)"
    figure.suptitle(f"{title + ': ' if title else ''}before pruning vs after pruning ({what})\n"
                    f"collision rate {_fmt(before['collision_rate'])} before -> {_fmt(after['collision_rate'])} after, "
                    f"{after['n_items']} items")
    return figure


def plot_pruning(before: Report, after: Report, path: str | Path, removed: Mapping[int, Any] | None = None,
                 title: str = "") -> Path:
    """Before and after pruning on one figure (see `pruning_figure`)."""
    return _save(pruning_figure(before, after, removed, title), path)


# ---------------------------------------------------------------- trend over index versions


def trend_figure(points: list[Mapping[str, Any]], gini_bound: float | None = None, title: str = "") -> Figure:
    """Per-layer Gini (top) and normalised entropy (bottom) of successive index versions, oldest first, so a
    slow drift toward an hourglass shows. A point: {"label", "layers": [{"level", "gini", "entropy_norm"}],
    "unpruned": same layers before pruning, or None}. The last point is this night's."""
    if not points:
        from rqsid import RqsidError

        raise RqsidError("trend_figure needs at least one index version")
    x = np.arange(len(points))
    figure = Figure(figsize=(max(6.0, 0.9 * len(points) + 3.5), 6.4), layout="constrained")
    gini_ax, entropy_ax = figure.subplots(2, 1, sharex=True)
    levels = sorted({layer["level"] for point in points for layer in point["layers"]})
    for level in levels:
        for ax, key in ((gini_ax, "gini"), (entropy_ax, "entropy_norm")):
            line, = ax.plot(x, _series(points, "layers", level, key), marker="o", linewidth=1.5, label=f"layer {level}")
            if any(point.get("unpruned") for point in points) and level == 2:
                ax.plot(x, _series(points, "unpruned", level, key), marker="x", linestyle="--", linewidth=1.2,
                        color=line.get_color(), label="layer 2 before pruning")
    if gini_bound is not None:
        gini_ax.axhline(gini_bound, color="tab:red", linestyle=":", linewidth=1.2, label=f"gate bound {gini_bound:g}")
    gini_ax.axvspan(x[-1] - 0.4, x[-1] + 0.4, color="gold", alpha=0.2, label="this night")
    gini_ax.set_ylabel("Gini (published SIDs)")
    entropy_ax.set_ylabel("entropy / log2 K")
    gini_ax.set_ylim(0, 1)
    entropy_ax.set_ylim(0, 1.05)
    for ax in (gini_ax, entropy_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    entropy_ax.set_xticks(x, [point["label"] for point in points], rotation=30, ha="right", fontsize=8)
    entropy_ax.set_xlabel("index version (oldest first)")
    gini_ax.set_title(title or f"per-layer balance of the last {len(points)} index versions")
    return figure


def _series(points, field: str, level: int, key: str) -> list[float]:
    out = []
    for point in points:
        layer = next((layer for layer in point.get(field) or [] if layer["level"] == level), None)
        value = None if layer is None else layer.get(key)
        out.append(np.nan if value is None else float(value))
    return out


def plot_trend(points: list[Mapping[str, Any]], path: str | Path, gini_bound: float | None = None, title: str = "") -> Path:
    return _save(trend_figure(points, gini_bound, title), path)


# ---------------------------------------------------------------- the generator's learning curve


def learning_curve_figure(history: list[Mapping[str, Any]], best_epoch: int | None = None, title: str = "") -> Figure:
    """Training loss per epoch (left) and validation Recall@10 / NDCG@10 at each evaluated epoch (right),
    the kept (best) epoch marked. `history`: the generator's per-epoch records."""
    figure = Figure(figsize=(9.0, 3.6), layout="constrained")
    loss_ax, valid_ax = figure.subplots(1, 2)
    epochs = [record["epoch"] for record in history]
    loss_ax.plot(epochs, [record["loss"] for record in history], marker=".", linewidth=1.5)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("training loss", fontsize=9)
    evaluated = [record for record in history if record.get("valid")]
    for metric in ("recall@10", "ndcg@10"):
        valid_ax.plot([r["epoch"] for r in evaluated], [r["valid"][metric] for r in evaluated], marker="o",
                      linewidth=1.5, label=f"valid {metric}")
    if best_epoch is not None:
        valid_ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept: epoch {best_epoch}")
    valid_ax.set_xlabel("epoch")
    valid_ax.set_title("validation (early-stopping users)", fontsize=9)
    valid_ax.legend(fontsize=8)
    for ax in (loss_ax, valid_ax):
        ax.grid(True, alpha=0.3)
    figure.suptitle(title or f"generator learning curve ({len(history)} epochs)")
    return figure


def plot_learning_curve(history: list[Mapping[str, Any]], path: str | Path, best_epoch: int | None = None,
                        title: str = "") -> Path:
    return _save(learning_curve_figure(history, best_epoch, title), path)
