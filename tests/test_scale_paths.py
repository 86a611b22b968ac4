"""Large-catalog fast paths: chunked encoding gives exactly the codes of one-block encoding."""

import numpy as np
import pytest

from rqsid.config import QuantizerConfig
from rqsid.quantize import base, make_tokenizer


def _skewed_embeddings(n: int = 1500, dim: int = 48, seed: int = 0) -> np.ndarray:
    """Normalised Gaussian mixture with Zipf-sized clusters, like a real catalog's text embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    weights = 1.0 / np.arange(1, 31) ** 1.1
    X = centres[rng.choice(30, size=n, p=weights / weights.sum())] + 0.4 * rng.normal(size=(n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("method", ["rkmeans", "rqvae"])
def test_chunked_encode_matches_one_block(method, monkeypatch):
    X = _skewed_embeddings()
    tok = make_tokenizer(QuantizerConfig(method=method, codebook_size=16, epochs=3, warmup_epochs=1,
                                         kmeans_iters=10, threads=1)).fit(X, progress=False)
    one_block = tok.encode(X)
    monkeypatch.setattr(base, "ENCODE_CHUNK", 97)  # 16 blocks, the last one partial
    chunked = tok.encode(X)
    assert chunked.shape == (len(X), 3) and chunked.dtype == np.int64
    np.testing.assert_array_equal(chunked, one_block)
    assert len(np.unique(one_block[:, 0])) > 8  # the codes are informative, not all one value


def test_non_finite_rows_found_in_every_block(monkeypatch):
    from rqsid import RqsidError

    X = _skewed_embeddings(n=500)
    X[3, 0], X[250, 7], X[499, 47] = np.nan, np.inf, -np.inf
    monkeypatch.setattr(base, "ENCODE_CHUNK", 64)  # the bad rows sit in the first, a middle and the last block
    with pytest.raises(RqsidError, match=r"rows \[3, 250, 499\] \(3 rows\) contain NaN or inf"):
        base.as_matrix(X)
    assert base.as_matrix(_skewed_embeddings(n=500)).shape == (500, 48)
