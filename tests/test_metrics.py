"""Distribution report: known Gini/entropy values, path statistics, pruned codes, formatting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rqsid.metrics import (
    distribution_report,
    entropy_bits,
    gini,
    is_hourglass,
)


def test_uniform_layer_is_perfectly_even():
    codes = np.repeat(np.arange(16), 5)[:, None]
    layer = distribution_report(codes, [16])["layers"][0]
    assert layer["gini"] == pytest.approx(0.0, abs=1e-12)
    assert layer["entropy_bits"] == pytest.approx(4.0) and layer["entropy_norm"] == pytest.approx(1.0)
    assert layer["std"] == 0 and layer["utilisation"] == 1 and layer["max_share"] == pytest.approx(1 / 16)


def test_single_code_layer_is_maximally_concentrated():
    codes = np.full((40, 1), 3)
    layer = distribution_report(codes, [8])["layers"][0]
    assert layer["gini"] == pytest.approx(7 / 8)
    assert layer["entropy_bits"] == 0 and layer["utilisation"] == pytest.approx(1 / 8)
    assert layer["max_share"] == 1 and layer["std"] == pytest.approx(40 * math.sqrt(7) / 8)


def test_hand_computed_layer():
    # counts [0, 1, 2, 5] over K = 4 codes: Gini = sum|xi - xj| / (2 K^2 mean) = 32 / 64
    codes = np.array([1, 2, 2, 3, 3, 3, 3, 3])[:, None]
    layer = distribution_report(codes, [4])["layers"][0]
    assert layer["counts"] == [0, 1, 2, 5] and layer["n_items"] == 8
    assert layer["gini"] == pytest.approx(0.5)
    expected_h = 1 / 8 * 3 + 2 / 8 * 2 + 5 / 8 * math.log2(8 / 5)
    assert layer["entropy_bits"] == pytest.approx(expected_h) and layer["entropy_norm"] == pytest.approx(expected_h / 2)
    assert layer["std"] == pytest.approx(math.sqrt(3.5)) and layer["utilisation"] == 0.75
    assert layer["max_share"] == pytest.approx(5 / 8)
    assert gini(np.array([5, 0, 2, 1])) == pytest.approx(0.5)
    assert entropy_bits(np.array([5, 0, 2, 1])) == pytest.approx(expected_h)


def test_paths_fanout_sparsity_and_collisions():
    codes = np.array([[0, 0], [0, 1], [0, 1], [1, 2]])
    report = distribution_report(codes, [2, 3])
    d1, d2 = report["depths"]
    assert (d1["distinct_prefixes"], d1["path_sparsity"], d1["mean_fanout"]) == (2, 1.0, 2.0)
    assert (d2["distinct_prefixes"], d2["path_sparsity"], d2["mean_fanout"]) == (3, 0.5, 1.5)
    assert report["collision_rate"] == 0.5 and report["n_items"] == 4


def test_pruned_tokens_are_skipped_and_removed_codes_leave_play():
    codes = np.array([[0, -1, 1], [0, -1, 1], [1, 2, 1], [1, 3, 0]])
    report = distribution_report(codes, [2, 4, 2], removed={2: [0, 1]})
    layer2 = report["layers"][1]
    assert layer2["n_items"] == 2 and layer2["k"] == 2 and layer2["n_removed"] == 2
    assert layer2["counts"] == [0, 0, 1, 1] and layer2["gini"] == pytest.approx(0.0) and layer2["utilisation"] == 1
    # the two items without a layer-2 token share the path (0, skip, 1)
    assert report["collision_rate"] == 0.5
    dropped = distribution_report(np.array([[0, -1], [1, -1]]), [2, 4])["layers"][1]
    assert dropped["n_items"] == 0 and dropped["gini"] is None


def test_hourglass_needs_layer_two_markedly_above_both_neighbours():
    def report(ginis):
        return {"layers": [{"level": i + 1, "gini": g} for i, g in enumerate(ginis)]}

    assert is_hourglass(report([0.2, 0.7, 0.3]))
    assert not is_hourglass(report([0.2, 0.35, 0.3]))  # within the margin
    assert not is_hourglass(report([0.8, 0.7, 0.3]))
    assert not is_hourglass(report([0.2, None, 0.3]))  # a dropped layer


