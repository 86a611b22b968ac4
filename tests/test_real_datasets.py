"""Our code on the real data: the Beauty and Scientific importers against the data's own README figures,
validation and the GX catalog suite on a real catalog, derived search queries, and the text model's
neighbours on real titles."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rqsid import RqsidError
from rqsid.catalog import validate_catalog, validate_interactions
from rqsid.embed import TextEmbedder, embed_catalog
from rqsid.generator.data import SidVocab, derive_queries, item_query_variants, sequences_from_interactions
from rqsid.importers import detect_kind, import_beauty, import_dataset, import_scientific
from rqsid.schema import CATALOG_SCHEMA

pytestmark = pytest.mark.integration

N = 64  # Beauty items embedded for the neighbour test


def _n_users(inter: pa.Table) -> int:
    return len(inter.column("user_id").unique())


@pytest.fixture(scope="module")
def scientific(scientific_dir):
    return import_scientific(scientific_dir)


@pytest.fixture(scope="module")
def subset(beauty):
    return beauty[0].slice(0, N)


@pytest.fixture(scope="module")
def embedded(subset):
    return embed_catalog(subset, TextEmbedder(batch_size=32, num_threads=1), progress=False)


@pytest.fixture(scope="module")
def beauty(beauty_dir):
    return import_beauty(beauty_dir)


def test_beauty_counts_match_the_data_readme(beauty):
    catalog, inter = beauty
    assert catalog.num_rows == 12101 and inter.num_rows == 198502 and _n_users(inter) == 22363
    ids = catalog.column("item_id").to_pylist()
    assert ids[0] == "1" and ids[-1] == "12101" and len(set(ids)) == 12101
    assert set(inter.column("item_id").to_pylist()) <= set(ids)
    lengths = pc.value_counts(inter.column("user_id")).field("counts").to_numpy()
    assert lengths.min() >= 5 and abs(lengths.mean() - 8.88) < 0.01


def test_beauty_sequences_keep_file_order(beauty, beauty_dir):
    _, inter = beauty
    first = (beauty_dir / "sequential_data.txt").read_text().splitlines()[1].split()
    rows = inter.filter(pc.equal(inter.column("user_id"), first[0]))
    assert rows.column("item_id").to_pylist() == first[1:]
    assert rows.column("seq").to_pylist() == list(range(len(first) - 1))


def test_beauty_brand_and_categories_are_separated(beauty):
    catalog, _ = beauty
    first = catalog.slice(0, 4).to_pylist()
    assert first[0]["brand"] == "OPI" and first[0]["categories"] == ["Makeup", "Nails", "Nail Polish"]
    assert first[2]["brand"] is None  # "Unknown" is not a brand
    assert first[2]["categories"] == ["Skin Care", "Face", "Creams & Moisturizers"]
    assert first[3]["brand"] is None and first[3]["categories"][0] == "Makeup"  # no brand in the list
    roots = set(c[0] for c in catalog.column("categories").to_pylist() if c)
    assert {"Skin Care", "Hair Care", "Makeup", "Fragrance"} <= roots
    brands = catalog.column("brand").to_pylist()
    assert "L'Oreal Paris" in brands and not any(b and "&#39;" in b for b in brands)  # entities decoded
    assert not roots & set(brands)


def test_scientific_counts_and_category_paths(scientific_dir):
    catalog, inter = import_scientific(scientific_dir)
    assert catalog.num_rows == 4344 and inter.num_rows == 58492 and _n_users(inter) == 8317
    assert catalog.column("item_id").to_pylist()[:3] == ["0", "1", "2"]
    row = catalog.slice(0, 1).to_pylist()[0]
    assert row["categories"] == ["Industrial & Scientific", "Industrial Electrical", "Passive Components", "Capacitors"]
    assert row["brand"] == "Sealed Unit Parts Co., Inc."
    first_user = json.loads((scientific_dir / "Scientific.inter.json").read_text())["0"]
    assert inter.slice(0, len(first_user)).column("item_id").to_pylist() == [str(i) for i in first_user]


def test_import_dataset_detects_the_format(beauty_dir, scientific_dir, tmp_path):
    assert detect_kind(beauty_dir) == "beauty" and detect_kind(scientific_dir) == "scientific"
    with pytest.raises(RqsidError, match="no known dataset"):
        detect_kind(tmp_path)
    with pytest.raises(RqsidError, match="does not exist"):
        import_dataset(tmp_path / "nope")


def test_real_catalog_validates_clean(scientific):
    catalog, interactions = scientific
    clean, quarantine = validate_catalog(catalog)
    assert clean.num_rows == 4344 and quarantine.num_rows == 0
    assert clean.schema.equals(CATALOG_SCHEMA)
    inter, bad = validate_interactions(interactions, clean.column("item_id"))
    assert inter.num_rows == 58492 and bad.num_rows == 0


def test_derived_queries_on_real_beauty_subset(beauty_dir):
    from rqsid.importers import import_beauty
    from rqsid.sids import load_reference_index

    catalog, inter = import_beauty(beauty_dir)
    vocab = SidVocab.from_sid_table(load_reference_index(beauty_dir / "reference-sids" / "rqvae.index.json", id_offset=1))
    seqs = sequences_from_interactions(inter.slice(0, 3000), vocab)
    with_q = derive_queries(seqs, vocab, catalog, seed=0)
    assert (with_q.query_ids >= 0).all() and len(with_q.query_ids) == len(seqs.items)
    np.testing.assert_array_equal(with_q.query_ids, derive_queries(seqs, vocab, catalog, seed=0).query_ids)
    # every query is one of its own item's variants
    brand_and_path = zip(catalog.column("brand").to_pylist(), catalog.column("categories").to_pylist(), strict=True)
    by_id = dict(zip(catalog.column("item_id").to_pylist(), brand_and_path, strict=True))
    for row, q in zip(seqs.items[:200], with_q.query_ids[:200], strict=True):
        brand, cats = by_id[vocab.item_ids[row]]
        assert with_q.query_texts[q] in item_query_variants(brand, cats)
    assert len(with_q.query_texts) > 50  # many distinct queries, not one per item


def test_nearest_neighbours_share_the_leaf_category(embedded, subset):
    X = embedded.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 384)
    leaf = np.array([c[-1] if c else "" for c in subset.column("categories").to_pylist()])
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    has_peer = np.array([(leaf == leaf[i]).sum() > 1 for i in range(N)]) & (leaf != "")
    agreement = (leaf[nearest] == leaf)[has_peer].mean()
    assert agreement > 0.5  # the nearest neighbour mostly shares the leaf category


def test_real_catalog_passes_the_gx_catalog_suite(scientific):
    from tasks.gates import check_catalog

    result = check_catalog(scientific[0].to_pandas())
    assert result.success, result.failures
    assert result.failures == []
    assert result.statistics["evaluated_expectations"] == result.statistics["successful_expectations"] >= 5
    assert result.results["success"] is True
