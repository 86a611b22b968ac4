"""Leave-one-out sequences, training windows, derived search queries, on hand-made and real data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rqsid import RqsidError
from rqsid.generator.data import (
    SidVocab,
    eval_batch,
    item_counts_before,
    item_query_variants,
    sequences_from_interactions,
    train_batch,
    user_bucket,
)
from rqsid.schema import INTERACTIONS_SCHEMA
from rqsid.sids import assign_sids


def interactions(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, seq = zip(*rows, strict=True)
    n = len(rows)
    return pa.table(
        {"user_id": users, "item_id": items, "seq": pa.array(seq, pa.int32()),
         "timestamp": pa.nulls(n, pa.int64()), "query": pa.nulls(n, pa.string())},
        schema=INTERACTIONS_SCHEMA,
    )


@pytest.fixture()
def vocab() -> SidVocab:
    codes = np.array([[k % 3, k % 2] for k in range(8)])
    return SidVocab.from_sid_table(assign_sids([f"p{k}" for k in range(8)], codes, [3, 2]))


def test_leave_one_out_split_in_seq_order(vocab):
    # user a: p0 p1 p2 p3 p4 (rows shuffled); user b: p5 p6 p7; user c has 2 items and is dropped
    rows = [("a", "p3", 3), ("b", "p5", 0), ("a", "p0", 0), ("c", "p1", 0), ("a", "p1", 1),
            ("b", "p6", 1), ("a", "p4", 4), ("c", "p2", 1), ("a", "p2", 2), ("b", "p7", 2)]
    seqs = sequences_from_interactions(interactions(rows), vocab)
    assert list(seqs.user_ids) == ["a", "b"] and seqs.dropped_users == 1
    a, b = 0, 1

    test = eval_batch(seqs, np.array([a, b]), "test", max_history=3)
    np.testing.assert_array_equal(test.targets, [4, 7])
    np.testing.assert_array_equal(test.lengths, [3, 2])  # a: last 3 of p0..p3; b: p5 p6
    np.testing.assert_array_equal(test.history, [[1, 2, 3], [5, 6, -1]])

    valid = eval_batch(seqs, np.array([a, b]), "valid", max_history=3)
    np.testing.assert_array_equal(valid.targets, [3, 6])
    np.testing.assert_array_equal(valid.history, [[0, 1, 2], [5, -1, -1]])

    train = train_batch(seqs, np.array([a, b]), max_history=3)
    # a's training part is p0 p1 p2: inputs p0 p1 predict p1 p2; b's is p5 only: no target
    np.testing.assert_array_equal(train.history, [[0, 1], [-1, -1]])
    np.testing.assert_array_equal(train.targets, [[1, 2], [-1, -1]])
    np.testing.assert_array_equal(item_counts_before(seqs, 8, "valid"), [1, 1, 1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(item_counts_before(seqs, 8, "test"), [1, 1, 1, 1, 0, 1, 1, 0])


def test_long_histories_keep_the_most_recent_items(vocab):
    rows = [("u", f"p{k % 8}", k) for k in range(12)]
    seqs = sequences_from_interactions(interactions(rows), vocab)
    train = train_batch(seqs, np.array([0]), max_history=4)
    # training part = items 0..9 -> window of the last 5 (5..9): inputs 5..8, targets 6..9
    np.testing.assert_array_equal(train.history, [[5, 6, 7, 0]])
    np.testing.assert_array_equal(train.targets, [[6, 7, 0, 1]])


def test_unknown_items_and_bad_splits_are_user_errors(vocab):
    with pytest.raises(RqsidError, match="without a SID"):
        sequences_from_interactions(interactions([("u", "p0", 0), ("u", "zz", 1), ("u", "p1", 2)]), vocab)
    seqs = sequences_from_interactions(interactions([("u", "p0", 0), ("u", "p1", 1), ("u", "p2", 2)]), vocab)
    with pytest.raises(RqsidError, match="split"):
        eval_batch(seqs, np.array([0]), "train", 4)


def test_user_buckets_are_stable_and_spread():
    users = np.array([str(u) for u in range(5000)], dtype=object)
    b = user_bucket(users, 100)
    np.testing.assert_array_equal(b, user_bucket(users, 100))
    assert b.min() >= 0 and b.max() < 100
    assert np.bincount(b, minlength=100).min() > 20


def test_query_variants_from_category_path_and_brand():
    variants = item_query_variants("L'Oreal Paris", ["Beauty", "Hair Care", "Shampoos"])
    assert variants == ["shampoos", "hair care shampoos", "l'oreal paris shampoos", "beauty hair care shampoos"]
    assert item_query_variants("OPI", []) == ["opi"]
    assert item_query_variants(None, None) == ["product"]


def test_random_windows_cover_every_target_of_a_long_history():
    codes = np.array([[k % 5, k // 5] for k in range(30)])
    vocab = SidVocab.from_sid_table(assign_sids([f"q{k}" for k in range(30)], codes, [5, 6]))
    seqs = sequences_from_interactions(interactions([("u", f"q{k}", k) for k in range(30)]), vocab)
    rng = np.random.default_rng(0)
    targets = set()
    for _ in range(200):
        batch = train_batch(seqs, np.array([0]), max_history=4, rng=rng)
        assert batch.history.shape == (1, 4) and (batch.targets >= 0).all()
        np.testing.assert_array_equal(batch.targets[0], batch.history[0] + 1)  # contiguous windows
        targets.update(batch.targets[0].tolist())
    assert targets == set(range(1, 28))  # every training target (items 1..27), never valid/test items
