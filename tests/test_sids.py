"""SidTable: dedup, token ids, parquet round trip, reference-index parsing (the real files: test_real_sids.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rqsid import RqsidError
from rqsid.sids import assign_sids, dedup_tokens, load_reference_index, load_sids, neutral_keys, read_sids, write_sids
from synthetic_tables import sid_table


def test_dedup_numbers_each_collision_group_in_neutral_key_order():
    codes = np.array([[1, 2], [3, 4], [1, 2], [1, -1], [1, 2], [1, -1], [0, 0]])
    ids = [f"item{i}" for i in range(7)]
    dedup = dedup_tokens(codes, ids)
    assert dedup[[1, 6]].tolist() == [-1, -1]  # unique paths need no dedup token
    keys = neutral_keys(ids)
    for group in ([0, 2, 4], [3, 5]):
        assert sorted(dedup[group].tolist()) == list(range(len(group)))
        assert dedup[group].tolist() == np.argsort(np.argsort(keys[group])).tolist()


def test_dedup_order_carries_no_id_information():
    """P5 ids follow first appearance in time: the lowest id of a collision group must not be token 0
    more often than chance (1 in 4 for groups of 4)."""
    codes = np.repeat(np.arange(400), 4)[:, None]
    ids = [str(i) for i in range(1600)]  # ids ascend inside every group
    dedup = dedup_tokens(codes, ids).reshape(400, 4)
    lowest_first = float(np.mean(dedup[:, 0] == 0))
    assert 0.18 < lowest_first < 0.32
    assert dedup_tokens(codes, ids).tolist() == dedup.reshape(-1).tolist()  # and it is deterministic


def test_token_matrix_offsets_skip_pruned_levels_and_end_with_eos():
    table = assign_sids(["a", "b", "c"], np.array([[1, 2, 3], [1, -1, 3], [1, -1, 3]]), [4, 5, 6])
    assert table.offsets.tolist() == [0, 4, 9, 15]
    assert table.dedup_size == 2 and table.eos == 17 and table.vocab_size == 18
    tokens = table.token_matrix().tolist()
    assert tokens[0] == [1, 6, 12, 17] and sorted(tokens[1:]) == [[1, 12, 15, 17], [1, 12, 16, 17]]
    assert table.sid_lengths().tolist() == [4, 4, 4]


def test_assign_sids_rejects_bad_input():
    with pytest.raises(RqsidError, match="outside"):
        assign_sids(["a", "b"], np.array([[0, 9], [0, 1]]), [4, 4])
    with pytest.raises(RqsidError, match="duplicate item ids"):
        assign_sids(["a", "a"], np.array([[0, 1], [0, 2]]), [4, 4])
    with pytest.raises(RqsidError, match="levels"):
        assign_sids(["a", "b"], np.array([[0, 1], [0, 2]]), [4, 4, 4])


def test_parquet_round_trip_keeps_nulls_and_metadata(tmp_path):
    table = sid_table(n=3000, exponents=(0.9, 1.4, 0.3, 0.3))
    codes = table.codes.copy()
    codes[::3, 1] = -1
    pruned = table.with_codes(codes, {"method": "top_k", "k": 3, "removed": {"2": [1, 2, 3]}})
    path = write_sids(tmp_path / "sids.parquet", pruned)
    back = read_sids(path)
    assert back.item_ids.tolist() == pruned.item_ids.tolist()
    assert np.array_equal(back.codes, pruned.codes) and np.array_equal(back.dedup, pruned.dedup)
    assert back.level_sizes == pruned.level_sizes and back.pruning == pruned.pruning
    assert back.removed_codes() == {2: [1, 2, 3]}
    assert np.array_equal(load_sids(path).token_matrix(), pruned.token_matrix())


def test_bad_reference_tokens_name_the_item(tmp_path):
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<b_1>", "<a_2>"]}))
    with pytest.raises(RqsidError, match="'1'"):
        load_reference_index(path)
