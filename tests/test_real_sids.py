"""Our code on the public reference SIDs that come with the real data (Beauty and Scientific): loading
them, their distribution report (library and CLI), pruning them, and the trie over every Beauty SID."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runner import rqsid, run_process
from rqsid.metrics import format_report, format_side_by_side, report_to_json, table_report
from rqsid.prune import choose_k, collision_rate_by_k
from rqsid.sids import assign_sids, collision_rate, load_reference_index
from rqsid.trie import SidTrie

pytestmark = pytest.mark.integration


def _assert_unique_and_round_trips(table):
    tokens = table.token_matrix()
    trie = SidTrie.build(tokens, table.vocab_size)
    assert np.array_equal(trie.lookup(tokens), np.arange(len(table)))


@pytest.fixture(scope="module")
def beauty_rqvae(beauty_dir):
    return load_reference_index(beauty_dir / "reference-sids" / "rqvae.index.json", id_offset=1)


def test_reference_index_keeps_levels_and_maps_beauty_ids(beauty_dir, beauty_rqvae):
    raw = json.loads((beauty_dir / "reference-sids" / "rqvae.index.json").read_text())
    assert len(beauty_rqvae) == 12101 and beauty_rqvae.level_sizes == (256, 256, 256, 256)
    assert beauty_rqvae.item_ids[0] == "1" and beauty_rqvae.item_ids[-1] == "12101"
    first = [int(tok.split("_")[1].rstrip(">")) for tok in raw["0"]]
    assert beauty_rqvae.codes[0].tolist() == first
    # after our dedup every SID is unique, although the reference's 4 levels still collide
    assert collision_rate(beauty_rqvae.codes) > 0
    keys = {tuple(row[row >= 0]) for row in beauty_rqvae.token_matrix()}
    assert len(keys) == len(beauty_rqvae)


def test_real_reference_report_is_consistent(beauty_dir):
    table = load_reference_index(beauty_dir / "reference-sids" / "rqvae.index.json", id_offset=1)
    report = report_to_json(table_report(table))
    assert report["n_items"] == 12101 and len(report["layers"]) == 4
    for layer in report["layers"]:
        assert sum(layer["counts"]) == 12101 and 0 <= layer["gini"] < 1
        assert layer["max_share"] == pytest.approx(max(layer["counts"]) / 12101)
    used_first_level = sum(c > 0 for c in report["layers"][0]["counts"])
    assert report["depths"][0]["distinct_prefixes"] == used_first_level
    assert report["layers"][0]["utilisation"] == pytest.approx(used_first_level / 256)
    assert [d["distinct_prefixes"] for d in report["depths"]] == sorted(d["distinct_prefixes"] for d in report["depths"])
    text = format_report(report)
    assert f"{report['layers'][1]['gini']:.3f}" in text and "collision rate" in text
    side = format_side_by_side({"rqvae": report, "copy": report})
    assert "rqvae" in side and side.count(f"{report['collision_rate']:.4f}") == 2


def test_report_json_on_the_beauty_reference(beauty_dir):
    path = beauty_dir / "reference-sids" / "rqvae.index.json"
    result = run_process("report", path, "--json", "--id-offset", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["n_items"] == 12101 and len(report["layers"]) == 4
    for layer in report["layers"]:
        for key in ("entropy_bits", "entropy_norm", "gini", "std", "utilisation", "max_share"):
            assert isinstance(layer[key], float)
    table = load_reference_index(path, id_offset=1)
    assert report["collision_rate"] == pytest.approx(collision_rate(table.codes))
    assert report["layers"][1]["counts"] == np.bincount(table.codes[:, 1], minlength=256).tolist()


def test_report_prints_tables_side_by_side(scientific_dir, beauty_dir):
    refs = scientific_dir / "reference-sids"
    text = rqsid("report", refs / "rqvae.index.json", refs / "rkmeans.index.json",
                 beauty_dir / "reference-sids" / "rqvae.index.json").stdout
    header = text.splitlines()[0].split()
    # equal file names are told apart by their dataset folder
    assert header == ["metric", "amazon-scientific-2018/rqvae.index.json", "rkmeans.index.json",
                      "amazon-beauty-2014/rqvae.index.json"]
    gini_row = next(line for line in text.splitlines() if line.startswith("L2 gini")).split()
    paths = [refs / "rqvae.index.json", refs / "rkmeans.index.json", beauty_dir / "reference-sids" / "rqvae.index.json"]
    assert gini_row[2:] == [f"{table_report(load_reference_index(p))['layers'][1]['gini']:.3f}" for p in paths]


@pytest.fixture(scope="module")
def beauty_rkmeans(beauty_dir):
    table = load_reference_index(beauty_dir / "reference-sids" / "rkmeans.index.json", id_offset=1)
    return assign_sids(table.item_ids, table.codes[:, :3], table.level_sizes[:3])  # 3 levels, like ours


def test_the_reference_sids_need_pruning_only_where_layer_2_collapsed(beauty_dir, beauty_rkmeans):
    """At prune.gini_threshold 0.5 the reference RQ-VAE SIDs of Beauty are left alone, and its residual k-means
    SIDs need a K between 1 and 255 whose pruned SIDs still name one item each."""
    rqvae = load_reference_index(beauty_dir / "reference-sids" / "rqvae.index.json", id_offset=1)
    assert choose_k(rqvae, gini_threshold=0.5, max_collision_rate=0.0).k == 0
    pruned = choose_k(beauty_rkmeans, gini_threshold=0.5, max_collision_rate=1.0)
    assert 0 < pruned.k < 256 and not pruned.dropped and pruned.trace[pruned.k - 1]["gini"] > 0.5
    _assert_unique_and_round_trips(pruned.table)


def test_collision_rate_never_falls_as_k_grows(beauty_rkmeans, scientific_dir):
    # choose_k relies on this: removing tokens only merges paths
    sci = load_reference_index(scientific_dir / "reference-sids" / "rqvae.index.json")
    for table in (beauty_rkmeans, sci):
        collisions = collision_rate_by_k(table.codes, 1, 256)
        assert (np.diff(collisions) >= 0).all() and collisions[0] == pytest.approx(collision_rate(table.codes))


def test_every_beauty_item_round_trips(beauty_dir):
    table = load_reference_index(beauty_dir / "reference-sids" / "rqvae.index.json", id_offset=1)
    tokens = table.token_matrix()
    trie = SidTrie.build(tokens, table.vocab_size)
    assert np.array_equal(trie.lookup(tokens), np.arange(len(table)))
    assert trie.lookup(tokens[123]) == 123
