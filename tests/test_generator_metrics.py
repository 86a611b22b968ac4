"""Ranking metrics on hand-made rankings, the head/tail split, the popularity baseline."""

from __future__ import annotations

import numpy as np
import pytest

from rqsid import RqsidError
from rqsid.generator.data import SidVocab
from rqsid.generator.evaluate import (
    format_table,
    head_codes,
    head_item_mask,
    popularity_ranking,
    ranking_metrics,
    split_metrics,
    summarize,
)
from rqsid.sids import assign_sids


def test_recall_and_ndcg_on_hand_made_rankings():
    ranked = np.array(
        [
            [7, 1, 2, 3, 4, 5, 6, 8, 9, 10],  # target 7 at rank 0
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],  # target 3 at rank 2
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],  # target 9 at rank 8: inside @10 only
            [1, 2, 3, -1, -1, -1, -1, -1, -1, -1],  # target 11 not returned
        ]
    )
    targets = np.array([7, 3, 9, 11])
    m = ranking_metrics(ranked, targets)
    np.testing.assert_array_equal(m["recall@5"], [1, 1, 0, 0])
    np.testing.assert_array_equal(m["recall@10"], [1, 1, 1, 0])
    np.testing.assert_allclose(m["ndcg@5"], [1.0, 1 / np.log2(4), 0, 0])
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 0.5, 1 / np.log2(10), 0])
    s = summarize(m)
    assert s["n"] == 4
    assert s["recall@10"] == pytest.approx(0.75)
    assert s["ndcg@10"] == pytest.approx((1.5 + 1 / np.log2(10)) / 4)


def test_an_empty_slot_never_matches_and_short_rankings_are_refused():
    m = ranking_metrics(np.full((2, 10), -1), np.array([0, 5]))
    assert m["recall@10"].sum() == 0
    with pytest.raises(RqsidError, match="@10"):
        ranking_metrics(np.zeros((2, 5), dtype=int), np.array([0, 1]))


def test_head_codes_are_the_most_frequent_covering_half_of_the_items():
    # code 4 holds 5 items, code 0 holds 3, codes 1/2/3 one each: 5/11 < 0.5, 8/11 >= 0.5
    codes = np.array([4, 4, 4, 4, 4, 0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(head_codes(codes), [0, 4])
    np.testing.assert_array_equal(head_codes(np.array([1, 1, 2, 2])), [1])  # exactly half is enough
    with pytest.raises(RqsidError, match="unpruned"):
        head_codes(np.array([1, -1, 2]))


def test_head_mask_uses_the_unpruned_layer2_token_of_pruned_items():
    ids = [f"i{k}" for k in range(6)]
    unpruned_codes = np.array([[0, 5, 1], [1, 5, 2], [2, 5, 3], [3, 6, 0], [0, 7, 1], [1, 8, 2]])
    unpruned = assign_sids(ids, unpruned_codes, [10, 10, 10])
    pruned_codes = unpruned_codes.copy()
    pruned_codes[:3, 1] = -1  # the frequent layer-2 token 5 is pruned away
    pruned = SidVocab.from_sid_table(assign_sids(ids, pruned_codes, [10, 10, 10]))
    mask = head_item_mask(unpruned, pruned)
    np.testing.assert_array_equal(mask, [True, True, True, False, False, False])
    with pytest.raises(RqsidError, match="unpruned"):
        head_item_mask(assign_sids(ids, pruned_codes, [10, 10, 10]), pruned)


def test_split_metrics_and_popularity_baseline():
    counts = np.array([0, 9, 3, 7, 1])
    top = popularity_ranking(counts, n_users=3, k=3)
    np.testing.assert_array_equal(top, [[1, 3, 2]] * 3)
    ranked = np.pad(top, ((0, 0), (0, 7)), constant_values=-1)
    head = np.array([False, True, False, True, False])
    out = split_metrics(ranked, np.array([1, 2, 4]), head)
    assert out["all"]["recall@5"] == pytest.approx(2 / 3)
    assert out["head"] == pytest.approx({"recall@5": 1.0, "ndcg@5": 1.0, "recall@10": 1.0, "ndcg@10": 1.0, "n": 1})
    assert out["tail"]["n"] == 2 and out["tail"]["recall@10"] == pytest.approx(0.5)
    table = format_table({"popularity": out})
    assert "| popularity | head | 1 | 1.0000 |" in table
    assert table.count("\n") == 4
