"""Residual k-means baseline and the shared tokenizer plumbing (factory, loading, errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_rqvae import skewed_embeddings, small_config

from rqsid import RqsidError
from rqsid.config import QuantizerConfig
from rqsid.quantize import RQVAE, ResidualKMeans, fit_sized, load_tokenizer, make_tokenizer
from rqsid.quantize.base import levels_for_catalog
from rqsid.sids import collision_rate


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


@pytest.mark.parametrize(
    "n_items, levels", [(12_101, 3), (32_768, 3), (32_769, 4), (100_000, 4), (262_144, 4), (1_000_000, 5), (10_000_000, 6)]
)
def test_the_code_space_grows_with_the_catalog(n_items, levels):
    assert levels_for_catalog(n_items, 3, 32_768, 8.0) == levels
    assert levels_for_catalog(n_items, 3, None, 8.0) == 3


def test_a_large_catalog_gets_more_levels_and_the_tokenizer_keeps_them(X, tmp_path):
    # 3000 items: 2 levels up to 500, then one more per doubling (1000, 2000, 4000): 5 levels
    tok = make_tokenizer(rk_config(codebook_size=16, levels=2, levels_up_to_items=500, items_growth_per_level=2.0))
    tok.fit(X, progress=False)
    assert tok.levels == 5 and tok.encode(X).shape == (len(X), 5) and tok.codebook_sizes == [16] * 5
    assert tok.code_space == {
        "n_items": 3000,
        "fit_items": 3000,
        "levels": 5,
        "codebook_size": 16,
        "levels_up_to_items": 500,
        "items_growth_per_level": 2.0,
    }
    loaded = load_tokenizer(tok.save(tmp_path / "rk"))
    assert loaded.levels == 5 and loaded.code_space == tok.code_space
    assert np.array_equal(loaded.encode(X), tok.encode(X))


def test_fitting_on_a_sample_still_encodes_every_item(X):
    tok = make_tokenizer(rk_config(fit_sample=1000)).fit(X, progress=False)
    assert tok.code_space["fit_items"] == 1000 and tok.code_space["n_items"] == 3000
    assert not np.allclose(tok.standardiser.mean.numpy(), X.mean(0))  # standardised with the sample's statistics
    assert tok.encode(X).shape == (3000, 3)
    again = make_tokenizer(rk_config(fit_sample=1000)).fit(X, progress=False)
    assert np.array_equal(again.encode(X), tok.encode(X))  # the sample is drawn from the seed


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_near_isotropic_inputs_give_flat_levels_where_plain_lloyd_collapsed(kind):
    """The study's controls in small: on uniform or Gaussian inputs every level stays flat (Gini < 0.3),
    which plain Lloyd from k-means++ seeds (kmeans_balance=0, the session-2 tokenizer) did not do."""
    from rqsid.metrics import distribution_report

    X = np.random.default_rng(0).standard_normal((1500, 96)).astype(np.float32)
    if kind == "uniform":
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    layers = lambda tok: distribution_report(tok.encode(X), tok.codebook_sizes)["layers"]  # noqa: E731
    balanced = layers(make_tokenizer(rk_config(codebook_size=64, kmeans_iters=50)).fit(X, progress=False))
    plain = layers(make_tokenizer(rk_config(codebook_size=64, kmeans_iters=50, kmeans_balance=0.0)).fit(X, progress=False))
    assert all(layer["gini"] < 0.3 and layer["max_share"] < 3 / 64 for layer in balanced)
    assert plain[-1]["gini"] > 0.6 and plain[-1]["max_share"] > 3 / 64


def test_fit_sized_adds_levels_until_the_codes_collide_less_than_asked(X):
    # 16 codes, 1 level: 3000 items share 16 paths (everything collides); each level added splits them further
    cfg = rk_config(codebook_size=16, levels=1, levels_up_to_items=None)
    tok = fit_sized(cfg, X, max_collision_rate=0.3, progress=False)
    tries = tok.code_space["tries"]
    assert [t["levels"] for t in tries] == list(range(1, tok.levels + 1)) and tok.levels > 1
    assert tries[-1]["collision_rate"] <= 0.3 < tries[-2]["collision_rate"]
    assert tries[-1]["collision_rate"] == pytest.approx(collision_rate(tok.encode(X)))
    assert "tries" not in fit_sized(cfg, X, None, progress=False).code_space  # no bound: one fit, as configured


@pytest.mark.parametrize("method", ["rkmeans", "rqvae"])
def test_an_added_level_keeps_the_fitted_codes_and_splits_shared_paths(X, method, tmp_path):
    config = rk_config(codebook_size=16, levels=2) if method == "rkmeans" else small_config(levels=2, epochs=5)
    tok = make_tokenizer(config).fit(X, progress=False)
    before, error_before = tok.encode(X), tok.reconstruction_error(X)
    tok.add_level(X)
    after = tok.encode(X)
    assert tok.levels == 3 and tok.codebook_sizes == [16, 16, 16] and after.shape == (len(X), 3)
    assert np.array_equal(after[:, :2], before)  # the fitted levels are untouched
    # 3,000 items on 16 x 16 paths all collide; a third level splits them about as well as a 3-level refit does
    refit = make_tokenizer(config.model_copy(update={"levels": 3})).fit(X, progress=False)
    assert collision_rate(before) > 0.98 and collision_rate(after) < min(0.8, 1.1 * collision_rate(refit.encode(X)))
    assert len(np.unique(after[:, 2])) > 12  # the new level uses its codes
    assert tok.reconstruction_error(X) < 0.95 * error_before
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.levels == 3 and np.array_equal(again.encode(X), after)
    assert tok.code_space["added_levels"][0]["level"] == 3
