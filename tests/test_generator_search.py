"""The query-conditioned (search) variant: derived queries, real text embeddings, and a model that uses them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rqsid.config import GeneratorConfig
from rqsid.embed import TextEmbedder
from rqsid.generator.data import SidVocab, derive_queries, embed_queries, sequences_from_interactions
from rqsid.generator.train import evaluate_split, train_generator
from rqsid.quantize.base import torch_threads
from rqsid.schema import CATALOG_SCHEMA, INTERACTIONS_SCHEMA
from rqsid.sids import assign_sids

CATEGORIES = ["Nail Polish", "Shampoos", "Lipstick", "Eye Shadow", "Sunscreen", "Perfume", "Hair Dryers", "Face Masks"]
PER_CATEGORY = 10


def catalog_and_random_histories(n_users: int = 400, seed: int = 0):
    """80 items in 8 categories (10 each); histories are random, so only the query can tell the target."""
    rng = np.random.default_rng(seed)
    n_items = len(CATEGORIES) * PER_CATEGORY
    ids = [f"s{k}" for k in range(n_items)]
    category = np.repeat(np.arange(len(CATEGORIES)), PER_CATEGORY)
    codes = np.stack([category, rng.integers(0, 4, n_items)], axis=1)  # layer 1 follows the category, like RQ on text
    table = assign_sids(ids, codes, [len(CATEGORIES), 4])
    catalog = pa.table(
        {"item_id": ids, "title": [f"item {k}" for k in range(n_items)], "brand": [None] * n_items,
         "categories": [["Beauty", CATEGORIES[c]] for c in category], "description": [None] * n_items, "extra": [None] * n_items},
        schema=CATALOG_SCHEMA,
    )
    lengths = rng.integers(4, 8, n_users)
    items = rng.integers(0, n_items, lengths.sum())
    users = np.repeat([f"u{u}" for u in range(n_users)], lengths)
    seq = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
    m = len(items)
    inter = pa.table(
        {"user_id": users, "item_id": [ids[i] for i in items], "seq": seq,
         "timestamp": pa.nulls(m, pa.int64()), "query": pa.nulls(m, pa.string())},
        schema=INTERACTIONS_SCHEMA,
    )
    return table, catalog, inter


CFG = GeneratorConfig(
    d_model=32, n_heads=2, n_layers=1, max_history=8, user_buckets=1, dropout=0.0, epochs=8, batch_size=64,
    lr=3e-3, warmup_steps=5, eval_every=4, valid_users=0, patience=5, beam_size=10, seed=3,
).sid_only()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while this module trains and ranks; torch's setting is process-wide, so it is restored."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def search_data():
    table, catalog, inter = catalog_and_random_histories()
    vocab = SidVocab.from_sid_table(table)
    seqs = derive_queries(sequences_from_interactions(inter, vocab), vocab, catalog, seed=0)
    return vocab, embed_queries(seqs, TextEmbedder())


def test_queries_are_embedded_once_per_distinct_text(search_data):
    _, seqs = search_data
    assert seqs.query_vectors.shape == (len(seqs.query_texts), 384)
    assert len(seqs.query_texts) == 2 * len(CATEGORIES)  # "leaf" and "beauty leaf" (no brand)
    np.testing.assert_allclose(np.linalg.norm(seqs.query_vectors, axis=1), 1.0, rtol=1e-4)


def test_query_conditioning_finds_what_history_cannot(search_data):
    vocab, seqs = search_data
    quiet = {"progress": False, "log": lambda _: None}
    with_query = train_generator(seqs, vocab, CFG.model_copy(update={"use_query": True}), **quiet)
    without = train_generator(seqs, vocab, CFG, **quiet)
    recall_q = evaluate_split(with_query, seqs, "test")[0]["all"]["recall@10"]
    recall_plain = evaluate_split(without, seqs, "test")[0]["all"]["recall@10"]
    chance = 10 / vocab.n_items
    print(f"recall@10 with query {recall_q:.3f}, without {recall_plain:.3f}, chance {chance:.3f}")
    assert recall_plain < 2 * chance  # random histories: nothing to learn without the query
    assert recall_q > 0.7  # the query names the category: 10 candidates, beam 10
