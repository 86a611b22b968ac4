"""SidTrie: every SID maps back to its item, invalid prefixes are rejected, masks match the paths, and a
saved trie loads back equal."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from rqsid import RqsidError
from rqsid.sids import assign_sids
from rqsid.trie import SidTrie
from synthetic_tables import sid_table


@pytest.fixture(scope="module")
def catalog_sids():
    """Beauty-sized SIDs: 12,000 items, 4 levels of 256 codes, an hourglass at layer 2, dedup tokens."""
    table = sid_table(exponents=(0.9, 1.4, 0.3, 0.3))
    return table, table.token_matrix(), SidTrie.build(table.token_matrix(), table.vocab_size)


def test_every_item_round_trips(catalog_sids):
    table, tokens, trie = catalog_sids
    assert np.array_equal(trie.lookup(tokens), np.arange(len(table)))
    assert trie.lookup(tokens[123]) == 123


def test_saved_trie_loads_back_equal(tmp_path, catalog_sids):
    table, tokens, trie = catalog_sids
    back = SidTrie.load(trie.save(tmp_path / "trie.npz"))
    for name in ("first_child", "token", "item", "edge_key"):
        assert np.array_equal(getattr(back, name), getattr(trie, name)) and getattr(back, name).dtype == getattr(trie, name).dtype
    assert back.vocab_size == trie.vocab_size and np.array_equal(back.lookup(tokens), np.arange(len(table)))
    with pytest.raises(RqsidError, match="not found"):
        SidTrie.load(tmp_path / "missing.npz")


def test_prefixes_and_foreign_paths_are_not_items(catalog_sids):
    table, tokens, trie = catalog_sids
    assert (trie.lookup(tokens[:, :3]) == -1).all()  # no eos yet
    wrong = tokens[:50].copy()
    wrong[:, 1] = wrong[:, 0]  # a level-1 token where a level-2 token belongs
    assert (trie.walk(wrong[:, :2]) == -1).all() and (trie.lookup(wrong) == -1).all()
    assert (trie.step(np.array([-1, 0]), np.array([5, table.eos])) == -1).all()


def test_allowed_and_mask_equal_the_real_continuations(catalog_sids):
    _, tokens, trie = catalog_sids
    continuations = defaultdict(set)
    for row in tokens:
        row = row[row >= 0]
        for depth in range(len(row)):
            continuations[tuple(row[:depth])].add(int(row[depth]))
    prefixes = [tuple(row[row >= 0][:depth]) for row in tokens[::40] for depth in range(4)]
    nodes = np.array([trie.walk(np.array(p))[0] if p else 0 for p in prefixes])
    mask = trie.allowed_mask(np.r_[nodes, -1])
    for i, prefix in enumerate(prefixes):
        assert set(trie.allowed(nodes[i]).tolist()) == continuations[prefix]
        assert set(np.flatnonzero(mask[i]).tolist()) == continuations[prefix]
    assert not mask[-1].any()


def test_variable_length_sids_map_to_exactly_one_item():
    codes = np.array([[1, 2, 3], [1, -1, 3], [1, -1, 3], [2, -1, -1], [1, 2, 3]])
    table = assign_sids(list("abcde"), codes, [4, 4, 4])
    tokens = table.token_matrix()
    trie = SidTrie.build(tokens, table.vocab_size)
    assert trie.lookup(tokens).tolist() == [0, 1, 2, 3, 4]
    ends = trie.item[trie.item >= 0]
    assert sorted(ends.tolist()) == [0, 1, 2, 3, 4]


def test_duplicate_sids_are_refused():
    with pytest.raises(RqsidError, match="repeat"):
        SidTrie.build(np.array([[1, 2, 9], [1, 3, 9], [1, 2, 9]]), 10)


def test_random_million_scale_structure_is_compact():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 64, (200_000, 3))
    table = assign_sids([str(i) for i in range(len(codes))], codes, [64, 64, 64])
    tokens = table.token_matrix()
    trie = SidTrie.build(tokens, table.vocab_size)
    assert np.array_equal(trie.lookup(tokens), np.arange(len(codes)))
    # at most one node per token of each SID, plus the root; 4 flat arrays of ~4-8 bytes per node
    assert trie.n_nodes <= (tokens >= 0).sum() + 1
    assert trie.nbytes <= 24 * trie.n_nodes
