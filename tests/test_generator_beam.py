"""Constrained beam search: only valid SIDs come out, each maps to one item, scores are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rqsid.config import GeneratorConfig
from rqsid.generator.beam import beam_search, sid_log_probs
from rqsid.generator.data import SidVocab
from rqsid.generator.model import GenerativeRetriever
from rqsid.generator.train import build_trie
from rqsid.quantize.base import torch_threads
from rqsid.sids import assign_sids
from synthetic_tables import sid_table


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: these are many tiny forward passes, which a second thread only slows down (restored after)."""
    with torch_threads(1):
        yield


TINY = GeneratorConfig(d_model=16, n_heads=2, n_layers=1, max_history=4, user_buckets=1, dropout=0.0).sid_only()


def random_vocab(rng: np.random.Generator, n_items: int, levels: int, size: int, prune_share: float) -> SidVocab:
    """Random SIDs: codes per level, layer 2 pruned for some items (variable length), dedup on collisions."""
    codes = rng.integers(0, size, (n_items, levels))
    if levels >= 2:
        codes[rng.random(n_items) < prune_share, 1] = -1
    table = assign_sids([f"i{k}" for k in range(n_items)], codes, [size] * levels)
    return SidVocab.from_sid_table(table)


def random_model(vocab: SidVocab, seed: int) -> GenerativeRetriever:
    torch.manual_seed(seed)
    model = GenerativeRetriever(vocab, TINY).eval()
    with torch.no_grad():  # sharper than the init so that scores differ a lot between items
        model.token_emb.weight.normal_(0, 1.0)
    return model


def random_histories(rng: np.random.Generator, n_users: int, n_items: int):
    lengths = rng.integers(1, TINY.max_history + 1, n_users)
    history = rng.integers(0, n_items, (n_users, TINY.max_history))
    history[np.arange(TINY.max_history)[None, :] >= lengths[:, None]] = -1
    return torch.from_numpy(history), torch.from_numpy(lengths)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_items=st.integers(1, 40),
    levels=st.integers(1, 3),
    size=st.integers(2, 6),
    prune_share=st.sampled_from([0.0, 0.3, 1.0]),
    beam=st.integers(1, 12),
)
def test_beam_only_emits_valid_sids_of_distinct_items(seed, n_items, levels, size, prune_share, beam):
    rng = np.random.default_rng(seed)
    vocab = random_vocab(rng, n_items, levels, size, prune_share)
    trie = build_trie(vocab)
    model = random_model(vocab, seed)
    history, lengths = random_histories(rng, 3, n_items)
    items, scores, paths = beam_search(model, trie, history, lengths, beam_size=beam, top_k=beam)

    expected = min(beam, n_items)  # the beam never loses a hypothesis while it has room
    assert ((items >= 0).sum(axis=1) == expected).all()
    for b in range(len(items)):
        found = items[b][items[b] >= 0]
        assert len(set(found.tolist())) == len(found)  # each SID maps to one item, no repeats
        assert np.all(np.diff(scores[b][: len(found)]) <= 1e-6)  # best first
        for k, item in enumerate(found):
            path = paths[b, k][paths[b, k] >= 0]
            sid = vocab.tokens[item][vocab.tokens[item] >= 0]
            assert path.tolist() == sid.tolist()  # the spelled tokens ARE the item's SID, eos included
            assert trie.lookup(path) == item


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), prune_share=st.sampled_from([0.0, 0.5]))
def test_beam_as_wide_as_the_catalog_is_exhaustive_and_exact(seed, prune_share):
    rng = np.random.default_rng(seed)
    vocab = random_vocab(rng, 25, 3, 3, prune_share)
    trie = build_trie(vocab)
    model = random_model(vocab, seed)
    history, lengths = random_histories(rng, 4, vocab.n_items)
    items, scores, _ = beam_search(model, trie, history, lengths, beam_size=vocab.n_items, top_k=vocab.n_items)

    start = model.head_start(model.encode(history)[torch.arange(4), lengths - 1])
    all_items = torch.arange(vocab.n_items)
    for b in range(4):
        exact = sid_log_probs(model, trie, start[b].expand(vocab.n_items, -1), all_items).numpy()
        np.testing.assert_allclose(np.exp(exact).sum(), 1.0, rtol=1e-4)  # a distribution over items
        assert sorted(items[b].tolist()) == list(range(vocab.n_items))
        np.testing.assert_allclose(scores[b], exact[items[b]], rtol=1e-4, atol=1e-5)
        assert items[b][0] == int(np.argmax(exact))


def test_narrow_beam_scores_equal_exact_sid_log_probs_on_realistic_sids():
    table = sid_table(exponents=(0.9, 1.4, 0.3, 0.3))  # Beauty's size: 12,000 items, 4 levels of 256 codes
    vocab = SidVocab.from_sid_table(table)
    trie = build_trie(vocab)
    model = random_model(vocab, 0)
    history, lengths = random_histories(np.random.default_rng(0), 8, vocab.n_items)
    items, scores, _ = beam_search(model, trie, history, lengths, beam_size=20, top_k=10)
    start = model.head_start(model.encode(history)[torch.arange(8), lengths - 1])
    exact = sid_log_probs(model, trie, start.repeat_interleave(10, 0), torch.from_numpy(items.reshape(-1)))
    assert (items >= 0).all()
    np.testing.assert_allclose(scores.reshape(-1), exact.numpy(), rtol=1e-4, atol=1e-4)
