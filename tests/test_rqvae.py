"""RQ-VAE tokenizer: reconstruction, levels, dead-code restart, early stopping, determinism, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rqsid import RqsidError
from rqsid.config import QuantizerConfig
from rqsid.quantize import RQVAE, load_tokenizer, make_tokenizer


def skewed_embeddings(n: int = 2000, dim: int = 48, clusters: int = 60, seed: int = 0) -> np.ndarray:
    """Unit-norm vectors from Zipf-sized clusters in a low-rank subspace plus noise, like text embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((12, dim))
    weights = 1.0 / np.arange(1, clusters + 1)
    label = rng.choice(clusters, n, p=weights / weights.sum())
    latent = rng.standard_normal((clusters, 12))[label] + 0.4 * rng.standard_normal((n, 12))
    X = latent @ basis + 1.5 * rng.standard_normal((n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def small_config(**overrides) -> QuantizerConfig:
    base = dict(
        method="rqvae",
        levels=3,
        codebook_size=16,
        latent_dim=8,
        hidden_dims=[64, 32],
        epochs=25,
        warmup_epochs=3,
        batch_size=256,
        lr=3e-3,
        lr_schedule="constant",
        kmeans_iters=20,
        early_stop_patience=50,
        seed=0,
        threads=1,
    )
    return QuantizerConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return skewed_embeddings()


@pytest.fixture(scope="module")
def fitted(X) -> RQVAE:
    return make_tokenizer(small_config()).fit(X, progress=False)


def mean_baseline_error(X: np.ndarray) -> float:
    return float(((X - X.mean(0)) ** 2).sum(1).mean())


def test_codes_and_reconstruction_beat_the_mean(fitted, X):
    codes = fitted.encode(X)
    assert codes.dtype == np.int64 and codes.shape == (len(X), 3)
    assert codes.min() >= 0 and codes.max() < 16
    recon = fitted.decode(codes)
    assert recon.dtype == np.float32 and recon.shape == X.shape
    assert fitted.reconstruction_error(X) < 0.7 * mean_baseline_error(X)
    assert fitted.levels == 3 and fitted.codebook_sizes == [16, 16, 16]


def test_each_level_lowers_the_reconstruction_error(fitted, X):
    codes = fitted.encode(X)
    errors = []
    for kept in (1, 2, 3):
        partial = codes.copy()
        partial[:, kept:] = -1  # -1 = level not used
        errors.append(float(((fitted.decode(partial) - X) ** 2).sum(1).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_training_uses_most_codes_on_every_level(fitted, X):
    codes = fitted.encode(X)
    used = [len(np.unique(codes[:, level])) for level in range(3)]
    assert min(used) >= 14, used
    history = [h for h in fitted.history if h["phase"] == "train"]
    assert len(history) == 25 and len(fitted.history) == 28
    assert history[-1]["recon"] < history[0]["recon"]


def test_reconstruction_error_grows_on_shifted_items(fitted, X):
    shifted = X + 0.3 * np.sign(X.mean(0))  # new items unlike the training catalog
    assert fitted.reconstruction_error(shifted) > 2 * fitted.reconstruction_error(X)
    per_item = fitted.reconstruction_errors(X)
    assert per_item.shape == (len(X),)
    assert np.isclose(per_item.mean(), fitted.reconstruction_error(X))


class FarCodebooks(RQVAE):
    """Moves half of each level's codes far from every latent right after k-means seeded them."""

    def _init_codebooks(self, Xs, generator):
        super()._init_codebooks(Xs, generator)
        with torch.no_grad():
            self.model.codebooks[:, ::2] += 1e3


@pytest.mark.parametrize("restart", [True, False])
def test_dead_codes_come_back_only_with_restart(X, restart):
    tok = FarCodebooks(small_config(epochs=12, dead_code_restart=restart)).fit(X, progress=False)
    used = [len(np.unique(tok.encode(X)[:, level])) / 16 for level in range(3)]
    first = next(h for h in tok.history if h["phase"] == "train")
    assert first["utilisation"] == [0.5, 0.5, 0.5]  # the far codes are dead after seeding
    if restart:
        assert first["restarted"] == [8, 8, 8]
        assert min(used) >= 0.85, used
    else:
        assert all(h["restarted"] == [0, 0, 0] for h in tok.history if h["phase"] == "train")
        assert max(used) <= 0.5, used


def test_early_stop_ends_training_and_keeps_the_best_epoch(X):
    tok = make_tokenizer(small_config(epochs=100, early_stop_patience=3, early_stop_min_delta=10.0)).fit(X, progress=False)
    train = [h for h in tok.history if h["phase"] == "train"]
    assert len(train) == 4  # epoch 1 sets the best, 3 epochs without a 10.0 improvement stop it


def test_same_seed_same_codes_other_seed_other_codes(X, fitted):
    again = make_tokenizer(small_config()).fit(X, progress=False)
    other = make_tokenizer(small_config(seed=1)).fit(X, progress=False)
    assert np.array_equal(again.encode(X), fitted.encode(X))
    assert not np.array_equal(other.encode(X), fitted.encode(X))


def test_fit_leaves_the_global_rng_alone(X):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tokenizer(small_config(epochs=2)).fit(X[:500], progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_save_and_load_round_trip(fitted, X, tmp_path):
    fitted.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, RQVAE) and loaded.config == fitted.config
    assert np.array_equal(loaded.encode(X), fitted.encode(X))
    assert np.array_equal(loaded.decode(fitted.encode(X)), fitted.decode(fitted.encode(X)))
    assert loaded.history == fitted.history


def test_user_errors_are_clear(fitted, X):
    bad = X[:300].copy()
    bad[[4, 9]] = np.nan
    with pytest.raises(RqsidError, match=r"rows \[4, 9\]"):
        make_tokenizer(small_config()).fit(bad, progress=False)
    with pytest.raises(RqsidError, match="10 items but codebook_size=16"):
        make_tokenizer(small_config()).fit(X[:10], progress=False)
    with pytest.raises(RqsidError, match="have 12 dims but the tokenizer was fit on 48"):
        fitted.encode(X[:, :12])
    with pytest.raises(RqsidError, match=r"code rows \[1\]"):
        fitted.decode(np.array([[0, 0, 0], [0, 16, 0]]))
    with pytest.raises(RqsidError, match="not fitted"):
        make_tokenizer(small_config()).encode(X)


def test_cosine_schedule_decays_the_learning_rate_over_the_quantised_epochs(X):
    tok = make_tokenizer(small_config(epochs=10, lr_schedule="cosine")).fit(X, progress=False)
    rates = [h["lr"] for h in tok.history if h["phase"] == "train"]
    assert rates[0] == pytest.approx(3e-3) and all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] < 0.05 * 3e-3
    assert all(h["lr"] == pytest.approx(3e-3) for h in tok.history if h["phase"] == "warmup")
    constant = make_tokenizer(small_config(epochs=3)).fit(X, progress=False)
    assert {h["lr"] for h in constant.history} == {3e-3}
    assert tok.reconstruction_error(X) < 0.7 * mean_baseline_error(X)


def layer_report(tok, X: np.ndarray) -> list[dict]:
    from rqsid.metrics import distribution_report

    return distribution_report(tok.encode(X), tok.codebook_sizes)["layers"]


def test_balanced_codebook_seeding_spreads_the_first_level(X):
    plain = layer_report(make_tokenizer(small_config(kmeans_balance=0.0, code_usage_weight=0.0)).fit(X, progress=False), X)
    balanced = layer_report(make_tokenizer(small_config(kmeans_balance=0.1, code_usage_weight=0.0)).fit(X, progress=False), X)
    assert plain[0]["max_share"] > 0.2 and balanced[0]["max_share"] < 0.15  # 1/16 = 0.0625 is even
    assert balanced[0]["gini"] < plain[0]["gini"] - 0.05


def test_the_code_usage_term_flattens_the_deeper_levels_at_little_cost(X):
    without = make_tokenizer(small_config(kmeans_balance=0.1, code_usage_weight=0.0)).fit(X, progress=False)
    with_term = make_tokenizer(small_config(kmeans_balance=0.1, code_usage_weight=0.1)).fit(X, progress=False)
    before, after = layer_report(without, X), layer_report(with_term, X)
    assert before[1]["gini"] > 0.25 and all(layer["gini"] < 0.2 for layer in after)
    assert with_term.reconstruction_error(X) < 1.05 * without.reconstruction_error(X)


def test_over_full_codes_are_split_onto_their_own_items(X):
    plain_config = dict(kmeans_balance=0.0, code_usage_weight=0.0)
    tok = make_tokenizer(small_config(**plain_config, code_split_factor=2.0)).fit(X, progress=False)
    train = [h for h in tok.history if h["phase"] == "train"]
    assert sum(map(sum, (h["split"] for h in train))) > 0 and train[-1]["split"] == [0, 0, 0]  # none after the last epoch
    plain = layer_report(make_tokenizer(small_config(**plain_config)).fit(X, progress=False), X)
    assert layer_report(tok, X)[1]["gini"] < plain[1]["gini"] - 0.05


def test_a_learning_rate_that_blows_up_the_network_is_rolled_back_and_halved(X):
    """At lr 0.5 the first warm-up epoch leaves the network far worse than predicting the mean; the guard
    discards such epochs and halves the rate until training goes on, and the codes beat the mean."""
    tok = make_tokenizer(small_config(lr=0.5, epochs=8)).fit(X, progress=False)
    rolled = [h for h in tok.history if h.get("rolled_back")]
    assert rolled and rolled[0]["phase"] == "warmup" and rolled[0]["recon"] > 1.5
    rates = [h["lr"] for h in tok.history]
    assert rates[0] == pytest.approx(0.5) and min(rates) <= 0.5 * 0.5 ** len(rolled) + 1e-12
    assert tok.reconstruction_error(X) < 0.9 * mean_baseline_error(X)


def test_a_healthy_fit_never_rolls_back(fitted):
    assert not any(h.get("rolled_back") for h in fitted.history)


def test_the_guard_restores_the_best_state_on_a_jump_or_a_dead_output():
    from rqsid.quantize.rqvae import _Guard

    model = torch.nn.Linear(4, 4)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = _Guard(model, optimiser, mean_error=1.0)

    def step(recon: float) -> bool:
        with torch.no_grad():
            model.weight.add_(1.0)  # what the epoch did to the weights
        return guard.check(recon)

    assert not step(0.95)  # better than the mean, not yet "live" (< 0.9)
    assert not step(0.99)  # near the mean before the fit was ever live: not dead, just untrained
    assert not step(0.5)
    kept = model.weight.detach().clone()
    assert step(0.8)  # 1.6x the best: rolled back to the 0.5 state, rate halved
    assert torch.equal(model.weight, kept) and guard.lr_scale == 0.5
    assert step(0.99)  # the output went constant after the fit was live
    assert guard.lr_scale == 0.25 and torch.equal(model.weight, kept)
    assert step(float("nan")) and guard.rollbacks == 3
    assert not step(5.0)  # after three rollbacks the fit goes on as it is
    guard = _Guard(model, optimiser, mean_error=1.0)
    assert not step(0.95) and guard.best == 0.95
    guard.new_phase()  # quantisation starts: judged against the state it starts from and the mean's error
    assert guard.best == 1.0 and not step(1.2) and step(1.6)
