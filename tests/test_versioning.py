"""Version ids (pinned: an existing project home must keep reusing its versions), the on-disk version store,
atomic publication, and stable SIDs — on the synthetic shop."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pyarrow as pa
import pytest

from rqsid import RqsidError
from rqsid.config import GeneratorConfig, QuantizerConfig, RqsidConfig
from rqsid.index import KEEP_NO_DEDUP, carry_codes, changed_sid_count, item_delta, stable_dedup
from rqsid.sids import SidTable, dedup_tokens
from rqsid.trie import SidTrie
from rqsid.versioning import IndexRegistry, VersionStore, catalog_version, interactions_version, item_content_hashes, version_id
from synthetic_tables import shop


@pytest.fixture(scope="module")
def catalog_600() -> pa.Table:
    return shop(n_items=600)[0]


def _retitle(catalog: pa.Table, rows: np.ndarray, suffix: str) -> pa.Table:
    titles = np.array(catalog.column("title").to_pylist(), dtype=object)
    titles[rows] = [f"{t} {suffix}" for t in titles[rows]]
    return catalog.set_column(catalog.schema.get_field_index("title"), "title", pa.array(titles, pa.string()))


def test_version_id_depends_on_inputs_and_config_only():
    a = version_id("tokenizer", {"embeddings": "emb-1", "catalog": "cat-1"}, QuantizerConfig())
    assert a == version_id("tokenizer", {"catalog": "cat-1", "embeddings": "emb-1"}, QuantizerConfig())
    assert a.startswith("tokenizer-")
    assert a != version_id("tokenizer", {"embeddings": "emb-2", "catalog": "cat-1"}, QuantizerConfig())
    assert a != version_id("tokenizer", {"embeddings": "emb-1", "catalog": "cat-1"}, QuantizerConfig(levels=4))


def test_version_ids_stay_what_they_were():
    """Ids computed before the identity rule moved into the config (commit 0ec7c5c): an existing project home
    keeps finding its catalogs, embeddings and indexes under these names."""
    config = RqsidConfig()
    embeddings = version_id("embeddings", {"items": "catalog-0123456789abcdef"}, config.embed.identity())
    assert embeddings == "embeddings-73ee4f4624cf1f01"
    inputs = {"items": "catalog-0", "embeddings": "embeddings-1", "tokenizer": "tokenizer-2"}
    key = version_id("inputs", inputs, {"prune": config.prune.identity(), "gate": config.gate.identity()})
    assert key == "inputs-12e67096909955b9"
    assert version_id("catalog", {"items": "catalog-1", "interactions": None}) == "catalog-09d290f8376ac50d"
    assert catalog_version(np.array(["b", "a"], dtype=object), np.array(["h2", "h1"], dtype=object)) == "catalog-649e1f742f527dbe"
    interactions = pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "seq": pa.array([0, 1, 0], pa.int32())})
    assert interactions_version(interactions) == "catalog-a058c4d6070567ca"


def test_identity_leaves_out_how_fast_an_artifact_is_made():
    for section in (QuantizerConfig, GeneratorConfig):
        fast, slow = section(threads=1), section(threads=4)
        assert fast.identity() == slow.identity() == {k: v for k, v in fast.model_dump(mode="json").items() if k != "threads"}
    assert QuantizerConfig(levels=4).identity() != QuantizerConfig().identity()


def test_content_hashes_see_every_text_field(catalog_600):
    hashes = item_content_hashes(catalog_600)
    assert len(hashes) == catalog_600.num_rows and all(len(h) == 16 for h in hashes)
    changed = item_content_hashes(_retitle(catalog_600, np.array([3, 7]), "v2"))
    assert np.flatnonzero(changed != hashes).tolist() == [3, 7]
    # a null brand and an empty brand are different content
    null_brand = catalog_600.set_column(2, "brand", pa.nulls(catalog_600.num_rows, pa.string()))
    empty_brand = catalog_600.set_column(2, "brand", pa.array([""] * catalog_600.num_rows))
    assert (item_content_hashes(null_brand) != item_content_hashes(empty_brand)).all()


def test_catalog_version_ignores_row_order(catalog_600):
    ids = np.array(catalog_600.column("item_id").to_pylist(), dtype=object)
    hashes = item_content_hashes(catalog_600)
    perm = np.random.default_rng(0).permutation(len(ids))
    assert catalog_version(ids, hashes) == catalog_version(ids[perm], hashes[perm])
    assert catalog_version(ids, hashes) != catalog_version(ids[:-1], hashes[:-1])


def _build_once(folder, calls):
    calls.append(folder)
    np.save(folder / "x.npy", np.arange(5))
    return {"rows": 5}


def test_store_reuses_an_existing_version_across_instances(tmp_path):
    calls: list = []
    first = VersionStore(tmp_path).get_or_create("embeddings", "emb-abc", lambda f: _build_once(f, calls))
    again = VersionStore(tmp_path).get_or_create("embeddings", "emb-abc", lambda f: _build_once(f, calls))
    assert len(calls) == 1 and not first.reused and again.reused
    assert again.manifest["rows"] == 5 and (again.path / "x.npy").exists()
    assert VersionStore(tmp_path).versions("embeddings") == ["emb-abc"]


def _crash_midway(root):
    def build(folder):
        np.save(folder / "half.npy", np.arange(3))
        raise RuntimeError("killed")

    VersionStore(root).get_or_create("tokenizer", "tok-1", build)


def test_a_crash_while_building_leaves_no_version(tmp_path):
    with pytest.raises(RuntimeError):
        _crash_midway(tmp_path)
    store = VersionStore(tmp_path)
    assert not store.exists("tokenizer", "tok-1")
    assert list((tmp_path / "tokenizer").iterdir()) == []  # the temporary folder is gone too
    calls: list = []
    assert not store.get_or_create("tokenizer", "tok-1", lambda f: _build_once(f, calls)).reused


def _publish_in_child(root, version):
    IndexRegistry(root).publish(version, lambda f: (f / "sids.txt").write_text(version) and {"n": 1})


def test_publish_moves_current_atomically_and_keeps_old_versions(tmp_path):
    registry = IndexRegistry(tmp_path / "demo")
    assert registry.current() is None
    # published from another process: the pointer and folder are plain files any process can read
    child = multiprocessing.get_context("spawn").Process(target=_publish_in_child, args=(registry.root, "index-1"))
    child.start()
    child.join()
    assert registry.current() == "index-1"
    with pytest.raises(RuntimeError):
        registry.publish("index-2", lambda f: (_ for _ in ()).throw(RuntimeError("gate failed")))
    assert registry.current() == "index-1" and registry.versions() == ["index-1"]
    registry.publish("index-3", lambda f: {"n": 2})
    assert registry.current() == "index-3"
    assert registry.current_path().name == "index-3"
    assert json.loads((registry.path("index-1") / "manifest.json").read_text())["n"] == 1
    with pytest.raises(RqsidError, match="does not exist"):
        registry.set_current("index-9")


def test_delta_and_carried_codes_keep_unchanged_items(catalog_600):
    prev = catalog_600.slice(0, 500)
    today = pa.concat_tables([_retitle(prev, np.arange(10, 20), "(new model)").slice(5), catalog_600.slice(500, 40)])
    delta = item_delta(
        prev.column("item_id").to_numpy(), item_content_hashes(prev),
        today.column("item_id").to_numpy(), item_content_hashes(today),
    )
    assert (delta.n_new, delta.n_changed, delta.n_removed) == (40, 10, 5)
    assert delta.n_unchanged == 495 - 10
    assert delta.as_dict()["new_or_changed_share"] == pytest.approx(50 / 535)

    rng = np.random.default_rng(1)
    prev_codes = rng.integers(0, 256, size=(500, 3))
    fresh = rng.integers(0, 256, size=(50, 3))
    codes = carry_codes(prev_codes, delta, fresh)
    unchanged = delta.unchanged
    np.testing.assert_array_equal(codes[unchanged], prev_codes[delta.prev_row[unchanged]])
    np.testing.assert_array_equal(codes[~unchanged], fresh)
    with pytest.raises(RqsidError, match="new codes"):
        carry_codes(prev_codes, delta, fresh[:3])


def test_stable_dedup_keeps_prior_tokens_and_fills_the_smallest_free():
    kept = np.array([[1, 2], [1, 2], [1, 2], [5, 6], [7, 8], [7, 8]])
    # items 0 and 1 had tokens 1 and 0; item 2 is new; item 3 lost its partner; items 4, 5 both claim 0
    prior = np.array([1, 0, -1, 0, 0, 0])
    ids = ["a", "b", "c", "d", "e", "f"]
    dedup = stable_dedup(kept, prior, ids)
    assert dedup[:4].tolist() == [1, 0, 2, -1]
    assert sorted(dedup[4:].tolist()) == [0, 1]  # both claim 0: the neutral order settles it
    # without history it numbers each group 0, 1, ... exactly as a fresh assignment does
    fresh = stable_dedup(kept, np.full(6, -1), ids)
    np.testing.assert_array_equal(fresh, dedup_tokens(kept, ids))


def test_an_item_alone_on_its_path_keeps_its_sid_when_new_items_join_it():
    kept = np.array([[1, 2], [1, 2], [1, 2], [3, 4]])
    # item 0 had [1, 2] to itself; items 1 and 2 are new on that path; item 3 is alone as before
    dedup = stable_dedup(kept, np.array([KEEP_NO_DEDUP, -1, -1, KEEP_NO_DEDUP]), ["a", "b", "c", "d"])
    assert dedup[[0, 3]].tolist() == [-1, -1] and sorted(dedup[1:3].tolist()) == [0, 1]
    table = SidTable(np.array(["a", "b", "c", "d"]), kept, dedup, (8, 8))
    tokens = table.token_matrix()
    assert len({tuple(row) for row in tokens}) == 4  # still one item per SID
    assert SidTrie.build(tokens, table.vocab_size).lookup(tokens).tolist() == [0, 1, 2, 3]


def test_changed_sid_count_pads_variable_lengths():
    prev_tokens = np.array([[1, 300, 600, 900, -1], [2, 600, 900, -1, -1], [3, 301, 601, 900, -1]])
    tokens = np.array([[1, 300, 600, 900], [2, 601, 900, -1], [9, 9, 9, 9]])
    counts = changed_sid_count(np.array(["a", "b", "c"]), prev_tokens, np.array(["a", "b", "z"]), tokens)
    assert counts == {"items_in_both": 2, "sids_changed": 1, "sids_kept": 1}
