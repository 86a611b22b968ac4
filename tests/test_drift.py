"""Drift statistics on catalog changes: content-hash deltas of the synthetic shop, and the thresholds of
DriftConfig applied to the three signals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rqsid.config import DriftConfig
from rqsid.drift import apply_removed_tokens, drift_report
from rqsid.index import carry_codes, item_delta
from rqsid.metrics import distribution_report
from rqsid.versioning import item_content_hashes
from synthetic_tables import shop


@pytest.fixture(scope="module")
def catalog() -> pa.Table:
    return shop(n_items=1200)[0]


def _delta(prev: pa.Table, today: pa.Table):
    ids = lambda t: t.column("item_id").to_numpy(zero_copy_only=False)  # noqa: E731
    return item_delta(ids(prev), item_content_hashes(prev), ids(today), item_content_hashes(today))


def test_growth_past_the_share_threshold_is_drift(catalog):
    prev, today = catalog.slice(0, 1000), catalog.slice(0, 1200)
    delta = _delta(prev, today)
    assert (delta.n_new, delta.n_changed, delta.n_removed) == (200, 0, 0)
    report = drift_report(delta.as_dict(), 0.70, 0.68, 0.40, 0.41, 0.75, DriftConfig())
    assert report.drifted and report.new_share == pytest.approx(200 / 1200)
    assert report.exceeded == [f"new_share {200 / 1200:.3f} > 0.1"]
    assert report.recon_ratio == pytest.approx(0.70 / 0.68)
    # the new items' own Gini is reported but not what the threshold reads (small samples look concentrated)
    assert report.layer2_gini_new_only == 0.75 and report.as_dict()["drifted"] is True


def test_small_growth_with_familiar_items_is_not_drift(catalog):
    delta = _delta(catalog.slice(0, 1000), catalog.slice(0, 1050))
    report = drift_report(delta.as_dict(), 0.70, 0.68, 0.40, 0.41, None, DriftConfig())
    assert not report.drifted and report.exceeded == []


def test_each_signal_trips_its_own_threshold(catalog):
    delta = _delta(catalog.slice(0, 1000), catalog.slice(0, 1010)).as_dict()
    config = DriftConfig(max_new_share=0.1, max_recon_ratio=1.5, max_new_layer2_gini=0.6)
    novel = drift_report(delta, 1.2, 0.6, 0.4, 0.45, None, config)
    assert [e.split()[0] for e in novel.exceeded] == ["recon_ratio"]
    piled = drift_report(delta, 0.6, 0.6, 0.4, 0.65, None, config)
    assert [e.split()[0] for e in piled.exceeded] == ["layer2_gini"]
    # no new items: nothing to reconstruct, no ratio
    none_new = drift_report(_delta(catalog.slice(0, 10), catalog.slice(0, 10)).as_dict(), None, 0.6, 0.4, 0.4, None, config)
    assert none_new.recon_ratio is None and not none_new.drifted


def test_new_items_take_the_index_pruning_before_the_gini_is_measured():
    rng = np.random.default_rng(0)
    index_codes = rng.integers(0, 64, size=(2000, 3))
    removed = [0, 1, 2, 3]
    index_codes[:600, 1] = rng.integers(0, 4, size=600)  # an hourglass: layer 2 piles onto codes 0..3
    # 300 new items that pile onto code 5, which the index did not prune
    new_codes = rng.integers(0, 64, size=(300, 3))
    new_codes[:, 1] = 5
    prev_ids = np.array([f"i{i}" for i in range(2000)], dtype=object)
    hashes = np.array(["h"] * 2000, dtype=object)
    today_ids = np.concatenate([prev_ids, [f"n{i}" for i in range(300)]])
    delta = item_delta(prev_ids, hashes, today_ids, np.concatenate([hashes, ["x"] * 300]))
    merged = carry_codes(index_codes, delta, new_codes)
    pruned = apply_removed_tokens(merged, 2, removed)
    assert (pruned[:, 1][np.isin(merged[:, 1], removed)] == -1).all()
    assert (pruned[:, [0, 2]] == merged[:, [0, 2]]).all()
    sizes = [64, 64, 64]
    before = distribution_report(apply_removed_tokens(index_codes, 2, removed), sizes, {2: removed})["layers"][1]["gini"]
    after = distribution_report(pruned, sizes, {2: removed})["layers"][1]["gini"]
    assert after > before + 0.15  # the merged layer 2 shows the new pile-up
    config = DriftConfig(max_new_share=0.5, max_new_layer2_gini=0.25)
    report = drift_report(delta.as_dict(), None, None, before, after, None, config)
    assert report.exceeded and report.exceeded[0].startswith("layer2_gini")
