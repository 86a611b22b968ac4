"""Residual k-means baseline and the shared tokenizer plumbing (factory, loading, errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_rqvae import skewed_embeddings

from rqsid import RqsidError
from rqsid.config import QuantizerConfig
from rqsid.quantize import RQVAE, ResidualKMeans, load_tokenizer, make_tokenizer


def rk_config(**overrides) -> QuantizerConfig:
    base = dict(method="rkmeans", levels=3, codebook_size=32, kmeans_iters=25, seed=0, threads=1)
    return QuantizerConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return skewed_embeddings(n=3000)


@pytest.fixture(scope="module")
def fitted(X) -> ResidualKMeans:
    return make_tokenizer(rk_config()).fit(X, progress=False)


def test_factory_chooses_by_method():
    assert isinstance(make_tokenizer(rk_config()), ResidualKMeans)
    assert isinstance(make_tokenizer(QuantizerConfig()), RQVAE)


def test_codes_use_every_level_and_each_level_lowers_the_error(fitted, X):
    codes = fitted.encode(X)
    assert codes.dtype == np.int64 and codes.shape == (len(X), 3)
    assert all(len(np.unique(codes[:, level])) == 32 for level in range(3))
    errors = []
    for kept in (0, 1, 2, 3):
        partial = codes.copy()
        partial[:, kept:] = -1
        errors.append(float(((fitted.decode(partial) - X) ** 2).sum(1).mean()))
    assert errors[0] > errors[1] > errors[2] > errors[3]  # errors[0]: nothing kept = the mean item
    assert np.isclose(errors[3], fitted.reconstruction_error(X))
    assert [h["level"] for h in fitted.history] == [1, 2, 3]


def test_encoding_the_training_data_repeats_the_fit(fitted, X):
    """Level-1 codes are the k-means clusters: each item sits nearest its own centroid."""
    codes = fitted.encode(X)
    standardised = (X - fitted.standardiser.mean.numpy()) / fitted.standardiser.std.numpy()
    centroids = fitted.codebooks[0].numpy()
    dist = ((standardised[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert np.array_equal(dist.argmin(1), codes[:, 0])


def test_deterministic_under_seed(fitted, X):
    assert np.array_equal(make_tokenizer(rk_config()).fit(X, progress=False).encode(X), fitted.encode(X))
    assert not np.array_equal(make_tokenizer(rk_config(seed=3)).fit(X, progress=False).encode(X), fitted.encode(X))


def test_save_and_load_round_trip(fitted, X, tmp_path):
    fitted.save(tmp_path / "rk")
    meta = json.loads((tmp_path / "rk" / "meta.json").read_text())
    assert meta["kind"] == "rkmeans" and meta["input_dim"] == X.shape[1] and meta["config"]["codebook_size"] == 32
    loaded = load_tokenizer(tmp_path / "rk")
    assert isinstance(loaded, ResidualKMeans)
    assert np.array_equal(loaded.encode(X), fitted.encode(X))
    assert np.array_equal(loaded.decode(fitted.encode(X)), fitted.decode(fitted.encode(X)))


def test_loading_something_else_is_a_user_error(tmp_path):
    with pytest.raises(RqsidError, match="no saved tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "state.pt").write_bytes(b"")
    with pytest.raises(RqsidError, match="is not an rqsid tokenizer"):
        load_tokenizer(tmp_path)


def test_too_few_items_for_the_codebook(X):
    with pytest.raises(RqsidError, match="20 points but 32 clusters"):
        make_tokenizer(rk_config()).fit(X[:20], progress=False)
