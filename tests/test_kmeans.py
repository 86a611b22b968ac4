"""k-means: seeding quality, empty-cluster re-seeding, edge cases, determinism, chunked distances."""

from __future__ import annotations

import importlib

import pytest
import torch

from rqsid import RqsidError
from rqsid.quantize.kmeans import balanced_assign, kmeans, kmeans_plus_plus, nearest_centroid


def skewed_blobs(n_blobs: int = 25, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs with Zipf-like sizes (a few large, many small), as catalogs are."""
    g = torch.Generator().manual_seed(seed)
    sizes = (400 / torch.arange(1, n_blobs + 1).float()).long().clamp_min(8)
    centres = torch.randn(n_blobs, dim, generator=g) * 20.0
    blob = torch.repeat_interleave(torch.arange(n_blobs), sizes)
    X = centres[blob] + torch.randn(len(blob), dim, generator=g)
    return X, blob


def blobs_hit(centroids: torch.Tensor, X: torch.Tensor, blob: torch.Tensor) -> int:
    """How many distinct blobs hold the data point nearest to some centroid."""
    nearest_point, _ = nearest_centroid(centroids, X)
    return len(torch.unique(blob[nearest_point]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_kmeans_plus_plus_seeds_every_well_separated_blob(seed):
    X, blob = skewed_blobs(seed=seed)
    centroids = kmeans_plus_plus(X, 25, torch.Generator().manual_seed(seed))
    assert blobs_hit(centroids, X, blob) == 25


def test_uniform_seeding_misses_blobs_so_the_seeding_test_can_tell():
    X, blob = skewed_blobs()
    g = torch.Generator().manual_seed(0)
    missed = [blobs_hit(X[torch.randperm(len(X), generator=g)[:25]], X, blob) < 25 for _ in range(5)]
    assert all(missed)


def test_kmeans_recovers_the_blob_partition():
    X, blob = skewed_blobs()
    result = kmeans(X, 25, iters=30, seed=0)
    # every cluster is exactly one blob: the pairs (cluster, blob) are one-to-one
    pairs = torch.unique(torch.stack([result.labels, blob], 1), dim=0)
    assert len(pairs) == 25
    assert torch.equal(torch.sort(result.counts).values, torch.sort(torch.bincount(blob)).values)


def test_empty_cluster_is_reseeded_at_the_farthest_point():
    X, blob = skewed_blobs(n_blobs=2)
    centre_a = X[blob == 0].mean(0)
    far_away = torch.full_like(centre_a, 1e4)  # no point is nearest to it: its cluster is empty
    init = torch.stack([centre_a, far_away])
    one_step = kmeans(X, 2, iters=1, init=init)
    farthest_from_a = int(((X - centre_a) ** 2).sum(1).argmax())
    assert torch.equal(one_step.centroids[1], X[farthest_from_a])
    converged = kmeans(X, 2, iters=20, init=init)
    assert sorted(converged.counts.tolist()) == sorted(torch.bincount(blob).tolist())


def test_fewer_points_than_clusters_is_a_user_error():
    with pytest.raises(RqsidError, match="10 points but 16 clusters"):
        kmeans(torch.randn(10, 4), 16)


def test_fewer_distinct_points_than_clusters_gives_duplicate_centres():
    distinct = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    X = distinct.repeat(20, 1)
    result = kmeans(X, 5, seed=0)
    assert result.inertia == 0.0
    assert (result.counts > 0).sum() == 3  # the two duplicate centres keep empty clusters
    assert torch.equal(torch.unique(result.centroids, dim=0), torch.unique(distinct, dim=0))


def test_same_seed_same_result_different_seed_different_result():
    X = torch.randn(3000, 8, generator=torch.Generator().manual_seed(5))  # no clear clusters: seeds matter
    a, b, c = (kmeans(X, 32, iters=10, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


def test_chunked_assignment_matches_brute_force(monkeypatch):
    g = torch.Generator().manual_seed(1)
    X, C = torch.randn(1000, 12, generator=g), torch.randn(40, 12, generator=g)
    kmeans_module = importlib.import_module("rqsid.quantize.kmeans")  # the package re-exports the function
    monkeypatch.setattr(kmeans_module, "_CHUNK_FLOATS", 40 * 37)  # 37-row chunks, last one partial
    labels, sq = nearest_centroid(X, C)
    brute = torch.cdist(X, C) ** 2
    assert torch.equal(labels, brute.argmin(1))
    assert torch.allclose(sq, brute.min(1).values, atol=1e-3)


def residual_levels(X: torch.Tensor, k: int, levels: int = 3, **balance) -> list:
    """Residual k-means by hand: the KMeansResult of every level."""
    generator, results = torch.Generator().manual_seed(0), []
    for _ in range(levels):
        results.append(kmeans(X, k, iters=50, generator=generator, **balance))
        X = X - results[-1].centroids[results[-1].labels]
    return results


@pytest.fixture(scope="module")
def isotropic() -> torch.Tensor:
    """Near-isotropic points, few per cluster (1500 in 96-d, k=64): like the residuals of deep levels."""
    return torch.randn(1500, 96, generator=torch.Generator().manual_seed(0))


def test_plain_lloyd_collapses_on_isotropic_residuals_so_the_balance_test_can_tell(isotropic):
    from rqsid.metrics import gini

    last = residual_levels(isotropic, 64)[-1]
    assert gini(last.counts.numpy()) > 0.7 and last.counts.max() > 0.25 * len(isotropic)


def test_balanced_iterations_keep_every_residual_level_flat_and_lower_the_error(isotropic):
    from rqsid.metrics import gini

    plain = residual_levels(isotropic, 64)
    balanced = residual_levels(isotropic, 64, balance=0.1, balanced_iters=20)
    for result in balanced:
        assert gini(result.counts.numpy()) < 0.15
        assert result.counts.max() < 3 * len(isotropic) / 64  # no code holds more than 3x its share
    assert balanced[-1].inertia < plain[-1].inertia  # a collapsed level wastes codes: balance costs nothing here


def test_balanced_assignment_evens_out_a_skewed_nearest_assignment_as_its_prices_warm_up():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(2000, 8, generator=g)
    centroids = torch.cat([torch.zeros(1, 8), 3.0 * torch.randn(15, 8, generator=g)])  # the centre at 0 is nearest to most
    nearest, _ = nearest_centroid(X, centroids)
    assert torch.bincount(nearest, minlength=16).max() > 0.9 * len(X)
    log_prices, largest = torch.zeros(16), []
    for _ in range(6):  # k-means carries the prices from one iteration to the next
        labels, sq = balanced_assign(X, centroids, log_prices, temperature=0.1)
        largest.append(int(torch.bincount(labels, minlength=16).max()))
    assert all(a > b for a, b in zip(largest, largest[1:], strict=False)) and largest[-1] < 2 * len(X) / 16
    assert torch.bincount(labels, minlength=16).min() > 0
    assert torch.allclose(sq, ((X - centroids[labels]) ** 2).sum(1), rtol=1e-4, atol=1e-3)


def test_balanced_kmeans_returns_nearest_centre_labels_and_keeps_well_separated_blobs():
    X, blob = skewed_blobs()
    result = kmeans(X, 25, iters=30, seed=0, balance=0.1, balanced_iters=30)  # balanced to the last update
    assert torch.equal(result.labels, nearest_centroid(X, result.centroids)[0])
    pairs = torch.unique(torch.stack([result.labels, blob], 1), dim=0)
    assert len(pairs) == 25  # balance does not split real clusters that are far apart
