"""Plots of distribution reports of SIDs with an hourglass, raw and pruned."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from rqsid import RqsidError
from rqsid.metrics import table_report
from rqsid.plots import (
    learning_curve_figure,
    lorenz_curve,
    lorenz_figure,
    plot_learning_curve,
    plot_lorenz,
    plot_pruning,
    plot_side_by_side,
    plot_token_frequencies,
    plot_trend,
    pruning_figure,
    side_by_side_figure,
    token_frequency_figure,
    trend_figure,
)
from rqsid.prune import drop_layer, prune_top_k
from synthetic_tables import sid_table


@pytest.fixture(scope="module")
def table():
    return sid_table(n=4000, exponents=(0.6, 1.2, 0.4, 0.3))  # 4 levels, as the Scientific reference SIDs


@pytest.fixture(scope="module")
def reports(table) -> dict:
    return {
        "raw": table_report(table),
        "top-16 pruned": table_report(prune_top_k(table, 16)),
        "layer 2 dropped": table_report(drop_layer(table)),
    }


def _png(path) -> np.ndarray:
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def test_lorenz_curve_area_gives_the_reports_gini(reports):
    for report in reports.values():
        for layer in report["layers"]:
            if layer["gini"] is None:
                continue
            counts = np.sort(layer["counts"])[layer["n_removed"]:]  # codes in play, as the report's Gini
            x, y = lorenz_curve(counts)
            area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
            assert 1 - 2 * area == pytest.approx(layer["gini"], abs=1e-9)


def test_token_frequencies_one_panel_per_layer(reports, tmp_path):
    raw = reports["raw"]
    figure = token_frequency_figure(raw, "Scientific")
    assert len(figure.axes) == len(raw["layers"])
    for ax, layer in zip(figure.axes, raw["layers"], strict=True):
        assert ax.get_yscale() == "log"
        assert f"Gini {layer['gini']:.3f}" in ax.get_title()
        steps = ax.lines[0].get_ydata()
        assert list(steps) == sorted(c for c in layer["counts"] if c > 0)[::-1]
    image = _png(plot_token_frequencies(raw, tmp_path / "freq.png", "Scientific"))
    assert image.shape[1] > image.shape[0]  # panels side by side


def test_dropped_layer_is_labelled_not_plotted(reports, tmp_path):
    dropped = reports["layer 2 dropped"]
    figure = token_frequency_figure(dropped)
    middle = figure.axes[1]
    assert not middle.lines
    assert "layer dropped" in middle.texts[0].get_text()
    labels = [t.get_text() for t in lorenz_figure(dropped).axes[0].get_legend().get_texts()]
    assert not any(label.startswith("layer 2 ") for label in labels)
    _png(plot_lorenz(dropped, tmp_path / "lorenz.png", "layer 2 dropped"))


def test_lorenz_legend_carries_each_gini(reports, tmp_path):
    raw = reports["raw"]
    legend = [t.get_text() for t in lorenz_figure(raw).axes[0].get_legend().get_texts()]
    assert legend == ["equality"] + [f"layer {layer['level']} (Gini {layer['gini']:.3f})" for layer in raw["layers"]]
    _png(plot_lorenz(raw, tmp_path / "lorenz.png", "Scientific"))


def test_side_by_side_compares_every_report(reports, tmp_path):
    figure = side_by_side_figure(reports)
    levels = len(reports["raw"]["layers"])
    assert len(figure.axes) == levels + 1  # a frequency panel per layer + the Gini bars
    layer2 = figure.axes[1]
    assert [t.get_text() for t in layer2.get_legend().get_texts()] == ["raw", "top-16 pruned"]
    bars = figure.axes[-1]
    assert len(bars.patches) == levels * len(reports)
    assert "dropped" in [t.get_text() for t in bars.texts]
    _png(plot_side_by_side(reports, tmp_path / "side.png"))
    with pytest.raises(RqsidError, match="at least one report"):
        plot_side_by_side({}, tmp_path / "none.png")


def test_before_and_after_pruning_share_one_figure_with_the_removed_tokens_marked(table, reports, tmp_path):
    before, after = reports["raw"], reports["top-16 pruned"]
    removed = prune_top_k(table, 16).removed_codes()
    figure = pruning_figure(before, after, removed, "shop")
    levels = len(before["layers"])
    assert len(figure.axes) == 2 * levels  # frequencies over Lorenz curves, one column per layer
    frequencies = figure.axes[1]  # layer 2, top row
    assert "Gini" in frequencies.get_title() and "before" in frequencies.get_title() and "after" in frequencies.get_title()
    assert "16 of 256 tokens removed" in frequencies.get_title()
    before_line, after_line = frequencies.lines
    assert before_line.get_label() == "before pruning" and after_line.get_label() == "after pruning (published)"
    assert list(before_line.get_ydata()) == sorted((c for c in before["layers"][1]["counts"] if c > 0), reverse=True)
    assert list(after_line.get_ydata()) == list(before_line.get_ydata()[16:])  # the top 16 went
    (marks,) = frequencies.collections
    assert sorted(marks.get_offsets()[:, 0]) == list(range(1, 17))  # the removed tokens are the 16 most frequent
    lorenz = figure.axes[levels + 1]
    assert [t.get_text() for t in lorenz.get_legend().get_texts()][1:] == [
        f"before (Gini {before['layers'][1]['gini']:.3f})", f"after (Gini {after['layers'][1]['gini']:.3f})"]
    assert "shop: before pruning vs after pruning (16 tokens removed)" in figure.get_suptitle()
    assert not figure.axes[0].collections  # layer 1 lost nothing
    _png(plot_pruning(before, after, tmp_path / "pruning.png", removed, "shop"))


def test_a_gate_passed_without_pruning_says_so(reports):
    raw = reports["raw"]
    figure = pruning_figure(raw, raw, {})
    assert "no pruning needed (K = 0)" in figure.get_suptitle()
    assert "nothing removed" in figure.axes[1].get_title()


def _night(label: str, ginis: list[float], unpruned_l2: float | None) -> dict:
    layers = [{"level": n + 1, "gini": g, "entropy_norm": 1 - g / 2} for n, g in enumerate(ginis)]
    unpruned = None if unpruned_l2 is None else [{"level": 2, "gini": unpruned_l2, "entropy_norm": 0.5}]
    return {"label": label, "layers": layers, "unpruned": unpruned}


def test_trend_shows_each_layer_over_index_versions_and_this_night(tmp_path):
    points = [_night("v1", [0.2, 0.3, 0.2], None), _night("v2", [0.2, 0.35, 0.2], 0.35),
              _night("v3", [0.2, 0.39, 0.2], 0.46)]
    figure = trend_figure(points, gini_bound=0.4)
    gini_ax, entropy_ax = figure.axes
    lines = {line.get_label(): line for line in gini_ax.lines}
    assert list(lines["layer 2"].get_ydata()) == [0.3, 0.35, 0.39]
    assert np.isnan(lines["layer 2 before pruning"].get_ydata()[0])  # an old version that kept no before-figures
    assert list(lines["layer 2 before pruning"].get_ydata()[1:]) == [0.35, 0.46]
    assert list(lines["gate bound 0.4"].get_ydata()) == [0.4, 0.4]
    assert [t.get_text() for t in entropy_ax.get_xticklabels()] == ["v1", "v2", "v3"]
    assert list({line.get_label(): line for line in entropy_ax.lines}["layer 1"].get_ydata()) == [0.9, 0.9, 0.9]
    _png(plot_trend(points, tmp_path / "trend.png", 0.4))
    with pytest.raises(RqsidError, match="at least one index version"):
        trend_figure([])


def test_learning_curve_plots_loss_every_epoch_and_validation_where_evaluated(tmp_path):
    history = [{"epoch": e, "loss": 5.0 / e} | ({"valid": {"recall@10": 0.01 * e, "ndcg@10": 0.005 * e}} if e % 2 == 0 else {})
               for e in range(1, 7)]
    figure = learning_curve_figure(history, best_epoch=4)
    loss_ax, valid_ax = figure.axes
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
    recall, ndcg, best = valid_ax.lines
    assert list(recall.get_xdata()) == [2, 4, 6] and list(recall.get_ydata()) == [0.02, 0.04, 0.06]
    assert best.get_label() == "kept: epoch 4" and list(best.get_xdata()) == [4, 4]
    _png(plot_learning_curve(history, tmp_path / "curve.png", 4))
