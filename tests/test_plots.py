"""Plots of distribution reports of SIDs with an hourglass, raw and pruned."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from rqsid import RqsidError
from rqsid.metrics import table_report
from rqsid.plots import (
    lorenz_curve,
    lorenz_figure,
    plot_lorenz,
    plot_side_by_side,
    plot_token_frequencies,
    side_by_side_figure,
    token_frequency_figure,
)
from rqsid.prune import drop_layer, prune_top_k
from synthetic_tables import sid_table


@pytest.fixture(scope="module")
def reports() -> dict:
    table = sid_table(n=4000, exponents=(0.6, 1.2, 0.4, 0.3))  # 4 levels, as the Scientific reference SIDs
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
