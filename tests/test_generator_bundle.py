"""A servable bundle: it answers exactly like the model it was made from (item text features on and off),
refuses a SID table or trie that is not the model's, and serves a newer index only on the stable path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_generator_retriever import HYBRID, features
from test_generator_train import CFG, N_ITEMS, synthetic

from rqsid import RqsidError
from rqsid.generator.bundle import load_bundle, make_bundle, save_bundle
from rqsid.generator.cases import last_seq_per_user
from rqsid.generator.data import SidVocab, sequences_from_interactions
from rqsid.generator.retriever import Retriever
from rqsid.generator.train import train_generator
from rqsid.index import KEEP_NO_DEDUP, stable_dedup
from rqsid.quantize.base import torch_threads
from rqsid.sids import SidTable, assign_sids
from rqsid.trie import SidTrie

META = {"catalog_name": "toy", "index_version": "index-a", "trained_index_version": "index-a", "catalog_version": "catalog-1"}
HISTORIES = [["it1", "it2"], ["it5"], ["nope", "it9", "it40"]]


def titles(ids) -> np.ndarray:
    return np.array([f"title of {i}" for i in ids], dtype=object)


@pytest.fixture(scope="module", params=["ids-only", "item-text"])
def made(request):
    table, inter, _ = synthetic()
    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(inter, vocab)
    text = request.param == "item-text"
    with torch_threads(1):
        model = train_generator(seqs, vocab, HYBRID if text else CFG, progress=False, log=lambda _: None,
                                item_features=features(N_ITEMS) if text else None)
    bundle = make_bundle(model, table, titles(table.item_ids), META, last_seq_per_user(inter))
    return table, model, bundle


def test_a_saved_bundle_answers_exactly_like_the_trained_model(made, tmp_path):
    _, model, bundle = made
    loaded = load_bundle(save_bundle(bundle, tmp_path / "bundle"))
    assert loaded.index_version == "index-a" and not loaded.rebound and loaded.meta["n_items"] == N_ITEMS
    with torch_threads(1):
        before = Retriever(model).recommend(HISTORIES, k=10)
        after = loaded.retriever().recommend(HISTORIES, k=10)
    assert [a.item_ids for a in after] == [b.item_ids for b in before]
    np.testing.assert_allclose([a.scores for a in after], [b.scores for b in before], atol=1e-5)
    assert after[2].unknown_history_items == 1
    assert loaded.title_of(after[0].item_ids[:2]) == [f"title of {i}" for i in after[0].item_ids[:2]]
    assert loaded.trained_through.num_rows == 400


def test_a_bundle_refuses_a_table_or_trie_that_is_not_its_models(made, tmp_path):
    table, model, bundle = made
    codes = table.codes.copy()
    codes[[0, 1]] = codes[[1, 0]]
    swapped = assign_sids(table.item_ids, codes, table.level_sizes)
    with pytest.raises(RqsidError, match="not the one the model decodes with"):
        make_bundle(model, swapped, titles(table.item_ids), META)
    with pytest.raises(RqsidError, match="lacks index_version"):
        make_bundle(model, table, titles(table.item_ids), {**META, "index_version": ""})
    folder = save_bundle(bundle, tmp_path / "tampered")
    SidTrie.build(swapped.token_matrix(), swapped.vocab_size).save(folder / "trie.npz")
    with pytest.raises(RqsidError, match="does not map the bundle's SIDs to its items"):
        load_bundle(folder)


def newer_table(table, n_new: int = 6):
    """The stable path: every old item keeps its SID; new items join at the end, on code paths that already
    collide, numbered as the stable path numbers them (rqsid.index.stable_dedup)."""
    groups, counts = np.unique(table.codes, axis=0, return_counts=True)
    shared = groups[counts > 1]
    new_codes = np.vstack([table.codes, shared[np.arange(n_new) % len(shared)]])
    ids = list(table.item_ids) + [f"new{k}" for k in range(n_new)]
    prior = np.concatenate([np.where(table.dedup >= 0, table.dedup, KEEP_NO_DEDUP), np.full(n_new, -1)])
    return SidTable(np.array(ids, dtype=object), new_codes, stable_dedup(new_codes, prior, ids), table.level_sizes), ids


def test_serving_a_newer_stable_index_makes_new_items_recommendable_and_survives_a_save(made, tmp_path):
    table, _, bundle = made
    newer, ids = newer_table(table)
    assert np.array_equal(newer.dedup[:N_ITEMS], table.dedup)  # every old SID kept
    served = bundle.serving(newer, "index-b", features(len(ids)), titles(ids))
    assert served.index_version == "index-b" and served.trained_index_version == "index-a" and served.rebound
    reloaded = load_bundle(save_bundle(served, tmp_path / "served"))
    n = len(ids)
    with torch_threads(1):
        answer = reloaded.retriever().recommend([["it1", "it2"]], k=n, beam_size=n)[0]
    assert {f"new{k}" for k in range(6)} <= set(answer.item_ids)
    assert reloaded.title_of(["new3"]) == ["title of new3"]
    assert bundle.index_version == "index-a"  # the original is untouched


def test_a_newer_index_that_changed_sids_is_refused_and_the_bundle_keeps_its_own(made):
    table, _, bundle = made
    codes = table.codes.copy()
    codes[3] = (codes[3] + 1) % 6
    changed = assign_sids(table.item_ids, codes, table.level_sizes)
    with pytest.raises(RqsidError, match="another SID"):
        bundle.serving(changed, "index-c", features(N_ITEMS), titles(table.item_ids))
    assert bundle.index_version == "index-a"
    assert bundle.trained.vocab.fingerprint() == SidVocab.from_sid_table(table).fingerprint()


def test_trained_through_is_each_users_last_seq():
    table = pa.table({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "z"], "seq": pa.array([0, 4, 2], pa.int32())})
    through = last_seq_per_user(table)
    assert dict(zip(through.column("user_id").to_pylist(), through.column("seq").to_pylist(), strict=True)) == {"a": 4, "b": 2}


def test_a_search_bundle_embeds_queries_with_the_catalogs_text_model():
    from test_generator_search import CATEGORIES, PER_CATEGORY, catalog_and_random_histories
    from test_generator_search import CFG as SEARCH

    from rqsid.embed import TextEmbedder
    from rqsid.generator.data import derive_queries, embed_queries

    table, catalog, inter = catalog_and_random_histories()
    vocab = SidVocab.from_sid_table(table)
    seqs = embed_queries(derive_queries(sequences_from_interactions(inter, vocab), vocab, catalog, seed=0), TextEmbedder())
    with torch_threads(1):
        model = train_generator(seqs, vocab, SEARCH.model_copy(update={"use_query": True}), progress=False, log=lambda _: None)
        bundle = make_bundle(model, table, titles(table.item_ids), {**META, "embed": {}})
        answers = bundle.retriever().recommend([["s1", "s50"], ["s1", "s50"]], k=5, queries=["lipstick", "sunscreen"])
    in_category = [{f"s{k}" for k in range(c * PER_CATEGORY, (c + 1) * PER_CATEGORY)} for c in (2, 4)]
    assert CATEGORIES[2] == "Lipstick" and CATEGORIES[4] == "Sunscreen"
    for answer, wanted in zip(answers, in_category, strict=True):
        assert answer.item_ids[0] in wanted
    with pytest.raises(RqsidError, match="needs a query"):
        bundle.retriever().recommend([["s1"]])
