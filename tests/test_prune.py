"""Pruning: top-K removal, dropping a layer, the K sweep against brute force, SIDs through the trie (on
synthetic SIDs shaped like residual k-means on Beauty; the real reference SIDs: test_real_sids.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rqsid import RqsidError
from rqsid.metrics import table_report
from rqsid.prune import auto_prune, choose_k, collision_rate_by_k, drop_layer, prune_top_k, retained_gini_by_k, token_ranking
from rqsid.sids import assign_sids, collision_rate
from rqsid.trie import SidTrie
from synthetic_tables import healthy_table, sid_table


@pytest.fixture(scope="module")
def hourglass():
    """12,000 items, 3 levels of 256 codes, layer-2 Gini about 0.89 (layers 1 and 3: 0.62, 0.20)."""
    return sid_table()


def _skewed_table(seed: int, n: int = 80, size: int = 10):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 6, n), np.minimum(rng.geometric(0.35, n) - 1, size - 1), rng.integers(0, 6, n)], 1)
    return assign_sids([f"i{i}" for i in range(n)], codes, [6, size, 6])


def _assert_unique_and_round_trips(table):
    tokens = table.token_matrix()
    trie = SidTrie.build(tokens, table.vocab_size)
    assert np.array_equal(trie.lookup(tokens), np.arange(len(table)))


def test_prune_top_k_removes_exactly_the_most_frequent_tokens(hourglass):
    counts = np.bincount(hourglass.codes[:, 1], minlength=256)
    pruned = prune_top_k(hourglass, 10)
    removed = pruned.pruning["removed"]["2"]
    assert len(removed) == 10 and min(counts[removed]) >= np.sort(counts)[-10]
    lost = np.isin(hourglass.codes[:, 1], removed)
    assert (pruned.codes[lost, 1] == -1).all() and np.array_equal(pruned.codes[~lost], hourglass.codes[~lost])
    assert np.array_equal(pruned.codes[:, [0, 2]], hourglass.codes[:, [0, 2]])
    _assert_unique_and_round_trips(hourglass)
    _assert_unique_and_round_trips(pruned)


def test_drop_layer_removes_the_level_everywhere_and_stays_decodable(hourglass):
    dropped = drop_layer(hourglass, level=2)
    assert (dropped.codes[:, 1] == -1).all() and dropped.pruning["method"] == "drop_layer"
    assert table_report(dropped)["layers"][1]["n_items"] == 0
    assert dropped.dedup_size > hourglass.dedup_size
    _assert_unique_and_round_trips(dropped)


@pytest.mark.parametrize("seed", range(6))
def test_sweeps_equal_pruning_each_k(seed):
    table = _skewed_table(seed)
    if seed % 2:
        codes = table.codes.copy()
        codes[::7, 1] = -1  # items that have no layer-2 token from the start
        table = assign_sids(table.item_ids, codes, table.level_sizes)
    collisions = collision_rate_by_k(table.codes, 1, 10)
    ginis = retained_gini_by_k(token_ranking(table.codes[:, 1], 10)[1])
    for k in range(11):
        pruned = prune_top_k(table, k)
        assert collisions[k] == pytest.approx(collision_rate(pruned.codes))
        if k < 10:  # the report of the pruned table gives the gate the same Gini
            assert ginis[k] == pytest.approx(table_report(pruned)["layers"][1]["gini"] or 0.0)


# cases chosen so that K = 0, an interior K, K = all tokens and the drop fallback each occur
@pytest.mark.parametrize("threshold,bound,expected_k",
                         [(0.6, 0.0, 0), (0.45, 0.5, 1), (0.42, 0.8, 4), (0.3, 0.95, 9), (0.3, 0.8, 10)])
def test_choose_k_is_the_smallest_passing_k(threshold, bound, expected_k):
    table = _skewed_table(11)
    result = choose_k(table, threshold, bound)
    # brute force: a layer already under the threshold is kept; else the first K meeting both bounds
    passing = []
    for k in range(11):
        pruned = prune_top_k(table, k)
        g = table_report(pruned)["layers"][1]["gini"] or 0.0
        if g <= threshold and (k == 0 or collision_rate(pruned.codes) <= bound):
            passing.append(k)
    assert result.k == expected_k
    if passing:
        assert result.k == passing[0] and not result.dropped
        assert (result.table.pruning or {"k": 0})["k"] == result.k
        assert (result.report["layers"][1]["gini"] or 0.0) <= threshold
    else:
        assert result.dropped and (result.table.codes[:, 1] == -1).all()
    _assert_unique_and_round_trips(result.table)


def test_healthy_layer_is_left_alone_and_unreachable_bound_drops(hourglass):
    healthy = healthy_table()
    kept = choose_k(healthy, gini_threshold=0.5, max_collision_rate=0.0)
    assert kept.k == 0 and kept.table is healthy and not kept.dropped
    result = choose_k(hourglass, gini_threshold=0.5, max_collision_rate=1.0)
    assert 0 < result.k < 256 and result.report["layers"][1]["gini"] <= 0.5
    assert result.trace[result.k - 1]["gini"] > 0.5
    dropped = choose_k(hourglass, gini_threshold=0.5, max_collision_rate=0.3)
    assert dropped.dropped and dropped.table.pruning["method"] == "drop_layer"
    _assert_unique_and_round_trips(result.table)


def test_collision_rate_never_falls_as_k_grows(hourglass):
    # choose_k relies on this: removing tokens only merges paths
    for table in (hourglass, healthy_table(levels=4)):
        collisions = collision_rate_by_k(table.codes, 1, 256)
        assert (np.diff(collisions) >= 0).all() and collisions[0] == pytest.approx(collision_rate(table.codes))


def test_refuses_bad_level_k_and_double_pruning(hourglass):
    with pytest.raises(RqsidError, match="level 5"):
        prune_top_k(hourglass, 3, level=5)
    with pytest.raises(RqsidError, match="k=300"):
        prune_top_k(hourglass, 300)
    with pytest.raises(RqsidError, match="already pruned"):
        choose_k(prune_top_k(hourglass, 3), 0.5, 0.5)


def test_auto_prune_follows_the_config(hourglass):
    from rqsid.config import PruneConfig

    config = PruneConfig(gini_threshold=0.65, max_collision_rate=0.6, max_k=100)
    result = auto_prune(hourglass, config)
    brute = next(k for k in range(101) if result.trace[k]["gini"] <= 0.65 and result.trace[k]["collision_rate"] <= 0.6)
    assert result.k == brute and len(result.trace) == 101
    assert result.k > 0 and result.report["layers"][1]["gini"] <= 0.65 and result.report["collision_rate"] <= 0.6
    with pytest.raises(RqsidError, match="prune.level=4"):
        auto_prune(hourglass, PruneConfig(level=4))


def test_keep_fallback_returns_the_unpruned_table(hourglass):
    kept = choose_k(hourglass, gini_threshold=0.5, max_collision_rate=0.3, fallback="keep")
    assert kept.table is hourglass and kept.k == 0 and not kept.met_bounds and not kept.dropped
    dropped = choose_k(hourglass, gini_threshold=0.5, max_collision_rate=0.3)
    assert not dropped.met_bounds and dropped.report["collision_rate"] > kept.report["collision_rate"]
