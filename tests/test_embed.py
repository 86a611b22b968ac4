"""Text embeddings with the real packaged model on the synthetic shop's texts (its neighbours on real
Beauty titles: test_real_datasets.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rqsid import RqsidError
from rqsid.embed import TextEmbedder, embed_catalog, read_embeddings, write_embeddings
from rqsid.schema import embeddings_schema
from synthetic_tables import shop

N = 64


@pytest.fixture(scope="module")
def embedder():
    return TextEmbedder(batch_size=32, num_threads=1)


@pytest.fixture(scope="module")
def subset():
    return shop()[0].slice(0, N)


@pytest.fixture(scope="module")
def embedded(subset, embedder):
    return embed_catalog(subset, embedder, progress=False)


def test_shape_schema_and_unit_norms(embedded, embedder, subset):
    assert embedder.dim == 384
    assert embedded.schema.equals(embeddings_schema(384))
    assert embedded.column("item_id").to_pylist() == subset.column("item_id").to_pylist()
    X = embedded.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 384)
    assert X.dtype == np.float32 and X.shape == (N, 384)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_deterministic_and_order_independent(embedder, subset):
    from rqsid.catalog import item_text

    texts = item_text(subset)[:24]
    a = embedder.embed(texts, progress=False)
    b = embedder.embed(texts, progress=False)
    np.testing.assert_array_equal(a, b)
    reversed_ = embedder.embed(texts[::-1], progress=False)[::-1]
    np.testing.assert_allclose(a, reversed_, atol=1e-5)  # rows come back in input order
    unsorted = TextEmbedder(batch_size=32, sort_by_length=False, num_threads=1)
    np.testing.assert_allclose(a, unsorted.embed(texts, progress=False), atol=1e-5)


def test_similar_titles_are_closer_than_unrelated(embedder):
    X = embedder.embed(
        [
            "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce",
            "OPI Red Shatter Crackle Nail Polish E55 New",
            "Conair Infiniti Pro Ceramic Hair Dryer 1875 Watt",
        ],
        progress=False,
    )
    sims = X @ X.T
    assert sims[0, 1] > sims[0, 2] + 0.1 and sims[0, 1] > sims[1, 2] + 0.1


def test_parquet_round_trip(tmp_path, embedded):
    ids = np.array(embedded.column("item_id").to_pylist(), dtype=object)
    X = embedded.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 384)
    write_embeddings(tmp_path / "e.parquet", ids, X)
    back_ids, back = read_embeddings(tmp_path / "e.parquet")
    assert back_ids.dtype == object and list(back_ids) == list(ids)
    np.testing.assert_array_equal(back, X)


def test_non_finite_and_ragged_vectors_are_rejected_with_rows(tmp_path):
    X = np.ones((6, 4), dtype=np.float32)
    X[2, 1] = np.nan
    X[4, 0] = np.inf
    write_embeddings(tmp_path / "nan.parquet", ["a", "b", "c", "d", "e", "f"], X)
    with pytest.raises(RqsidError, match=r"NaN or inf in rows 2, 4 \(item_ids c, e\)"):
        read_embeddings(tmp_path / "nan.parquet")
    ragged = pa.table({"item_id": ["a", "b", "c"], "vector": [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0, 0.0]]})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(RqsidError, match="inconsistent dimension .* rows 2"):
        read_embeddings(tmp_path / "ragged.parquet")
    with pytest.raises(RqsidError, match="2 ids but a matrix"):
        write_embeddings(tmp_path / "bad.parquet", ["a", "b"], X)


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(RqsidError, match="does not exist"):
        TextEmbedder(model_path=tmp_path / "no-model")


def test_embed_command_matches_the_library(tmp_path, subset, embedded, capsys):
    import argparse

    from cli.data import register
    from rqsid.catalog import write_catalog

    write_catalog(subset.slice(0, 16), tmp_path / "catalog.parquet")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["embed", "--catalog", str(tmp_path / "catalog.parquet"), "--out", str(tmp_path / "e.parquet"),
                              "--batch-size", "8"])
    assert args.func(args) == 0
    ids, X = read_embeddings(tmp_path / "e.parquet")
    expected = embedded.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 384)[:16]
    assert list(ids) == subset.column("item_id").to_pylist()[:16]
    np.testing.assert_allclose(X, expected, atol=1e-5)
    assert "items/s" in capsys.readouterr().out


def test_row_groups_are_read_into_one_matrix_with_global_row_numbers(tmp_path, monkeypatch):
    import rqsid.embed

    monkeypatch.setattr(rqsid.embed, "ROW_GROUP_ROWS", 7)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5)).astype(np.float32)
    ids = [f"i{k}" for k in range(30)]
    path = write_embeddings(tmp_path / "e.parquet", ids, X)
    assert pq.ParquetFile(path).num_row_groups == 5
    got_ids, got = read_embeddings(path)
    assert got_ids.tolist() == ids and np.array_equal(got, X) and got.flags.c_contiguous
    X[23, 2] = np.inf  # in the fourth row group: reported by its row in the whole file
    write_embeddings(path, ids, X)
    with pytest.raises(RqsidError, match=r"rows 23 \(item_ids i23\)"):
        read_embeddings(path)
