"""Great Expectations gates on the synthetic shop, real text-model embeddings and crafted bad inputs (real
GX, no mocks; a real catalog through the catalog suite: test_real_datasets.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rqsid import RqsidError
from rqsid.config import GateConfig
from rqsid.metrics import distribution_report
from synthetic_tables import shop, sid_table
from tasks.gates import GateResult, check_catalog, check_distribution, check_embeddings


@pytest.fixture(scope="module")
def shop_frame() -> pd.DataFrame:
    return shop()[0].to_pandas()


@pytest.fixture(scope="module")
def reference_report() -> dict:
    table = sid_table(n=4000, exponents=(0.6, 1.2, 0.4, 0.3))
    return distribution_report(table.codes, table.level_sizes)


def _failure(result: GateResult, start: str) -> str:
    matches = [line for line in result.failures if line.startswith(start)]
    assert len(matches) == 1, result.failures
    return matches[0]


# ---------------------------------------------------------------- catalog


def test_clean_catalog_passes(shop_frame):
    result = check_catalog(shop_frame)
    assert result.success and result.failures == []
    assert result.statistics["evaluated_expectations"] == result.statistics["successful_expectations"] >= 5


def test_catalog_with_bad_rows_fails_naming_them(shop_frame):
    bad = shop_frame.head(20).copy()
    bad.loc[3, "item_id"] = bad.loc[1, "item_id"]  # duplicate
    bad.loc[5, "item_id"] = None  # missing
    bad.loc[7, ["title", "description"]] = ["   ", None]  # no text at all
    bad.loc[9, ["title", "description"]] = [None, "a description keeps the item"]
    result = check_catalog(bad)
    assert not result.success
    assert len(result.failures) == 3
    assert "2 of 20 rows" in _failure(result, "item_id is unique")
    assert "row 5" in _failure(result, "item_id is present")
    text = _failure(result, "item has text")
    assert "1 of 20 rows" in text and f"item '{bad.loc[7, 'item_id']}'" in text


def test_empty_catalog_fails_row_count():
    empty = pd.DataFrame({"item_id": pd.Series([], dtype=object), "title": pd.Series([], dtype=object)})
    result = check_catalog(empty)
    assert not result.success
    assert _failure(result, "catalog has at least one row").endswith("observed 0")


def test_catalog_without_ids_is_a_user_error():
    with pytest.raises(RqsidError, match="no item_id column"):
        check_catalog(pd.DataFrame({"title": ["a"]}))


# ---------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def real_embeddings(shop_frame):
    """Real MiniLM embeddings of 48 Scientific items (normalised, 384-d)."""
    import pyarrow as pa

    from rqsid.embed import TextEmbedder, item_text

    subset = shop_frame.head(48)
    table = pa.Table.from_pandas(subset, preserve_index=False)
    X = TextEmbedder(num_threads=1).embed(item_text(table), progress=False)
    return subset["item_id"].to_numpy(dtype=object), X


def test_real_embeddings_pass_tight_norm_bounds(real_embeddings):
    ids, X = real_embeddings
    result = check_embeddings(ids, X, expected_dim=384, min_norm=0.99, max_norm=1.01)
    assert result.success, result.failures


def test_corrupt_embeddings_fail_each_check(real_embeddings):
    ids, X = real_embeddings
    ids, X = ids.copy(), X.copy()
    X[2, 10] = np.nan
    X[4] = 0.0
    X[6] *= 50.0
    ids[8] = ids[9]
    result = check_embeddings(ids, X, expected_dim=384, min_norm=0.5, max_norm=2.0)
    assert not result.success
    assert f"item '{ids[2]}'" in _failure(result, "vectors have no NaN or inf")
    norms = _failure(result, "vector norms within bounds")
    assert "2 of 48 rows" in norms and "row 4" in norms and "row 6" in norms
    assert "2 of 48 rows" in _failure(result, "item_id is unique")
    assert len(result.failures) == 3


def test_wrong_dimension_fails_with_observed_dim(real_embeddings):
    ids, X = real_embeddings
    result = check_embeddings(ids, X, expected_dim=768)
    line = _failure(result, "vectors have the expected dimension")
    assert "48 of 48 rows" in line and "= 384" in line
    assert not result.success


def test_mismatched_ids_are_a_user_error(real_embeddings):
    ids, X = real_embeddings
    with pytest.raises(RqsidError, match="48 rows but 47 item ids"):
        check_embeddings(ids[:-1], X, expected_dim=384)


# ---------------------------------------------------------------- distribution


def test_real_report_gate_passes_and_fails_at_its_own_figures(reference_report):
    layer2_gini = reference_report["layers"][1]["gini"]
    collisions = reference_report["collision_rate"]
    lowest_use = min(layer["utilisation"] for layer in reference_report["layers"])
    loose = GateConfig(max_layer2_gini=min(1.0, layer2_gini + 0.01), max_collision_rate=min(1.0, collisions + 0.01),
                       min_utilisation=lowest_use)
    assert check_distribution(reference_report, loose).success

    tight = GateConfig(max_layer2_gini=layer2_gini / 2, max_collision_rate=collisions + 0.01,
                       min_utilisation=lowest_use)
    result = check_distribution(reference_report, tight)
    assert not result.success
    assert result.failures == [f"layer-2 Gini <= max_layer2_gini: observed {layer2_gini:.4g}"]
    observed = [r["result"]["observed_value"] for r in result.results["results"]]
    assert pytest.approx(layer2_gini) in observed


def test_utilisation_and_collisions_fail_per_layer(reference_report):
    gate = GateConfig(max_layer2_gini=1.0, max_collision_rate=0.0, min_utilisation=1.0)
    result = check_distribution(reference_report, gate)
    under_used = [layer["level"] for layer in reference_report["layers"] if layer["utilisation"] < 1.0]
    expected = len(under_used) + (reference_report["collision_rate"] > 0)
    assert len(result.failures) == expected
    assert result.success is (expected == 0)


def test_dropped_layer_is_not_gated(reference_report):
    codes = np.array([[0, -1, 0], [1, -1, 1], [2, -1, 0], [3, -1, 1]])
    report = distribution_report(codes, [4, 4, 2])
    result = check_distribution(report, GateConfig(max_layer2_gini=0.01, max_collision_rate=0.0, min_utilisation=0.5))
    assert result.success, result.failures
    assert result.statistics["evaluated_expectations"] == 3  # collisions + layers 1 and 3


def test_report_without_layers_is_a_user_error():
    with pytest.raises(RqsidError, match="lacks"):
        check_distribution({"n_items": 3}, GateConfig())
