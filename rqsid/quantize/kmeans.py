"""k-means in torch: greedy k-means++ seeding, then Lloyd iterations, optionally balanced at first.

Distances are computed in row chunks, so memory stays at about `chunk x k` floats whatever n is
(1M x 384 with k=256 runs in a few hundred MB besides X itself). Everything random draws from one
`torch.Generator`, so a seed fixes the result.

Edge cases, decided here once:
- n < k raises `RqsidError`: k clusters cannot be filled from fewer points.
- fewer *distinct* points than k is allowed: once every point coincides with a centre, seeding
  picks further centres uniformly among the points, so some centres are duplicates and their
  clusters stay empty (their count is 0). Callers that need every code used must supply more
  distinct data.
- a cluster that becomes empty during Lloyd is re-seeded at the points farthest from their
  centres (the worst-served points), one distinct point per empty cluster.

Balanced iterations (`balance` > 0). On near-isotropic data with few points per cluster (the
residuals of deep quantisation levels) plain Lloyd collapses, whatever the seeding: a centre that is
the mean of many points sits near the middle and is closer to every point than the other centres,
so it takes ever more of them (measured, 4,344 isotropic Gaussian points in 384-d, k=256: one centre
holds 94 % of the points at level 2 after k-means++ seeding, and still 54-94 % after uniform random
seeding). The first `balanced_iters` iterations therefore assign points by a Sinkhorn-balanced
transport plan (entropic optimal transport with equal cluster sizes as column marginals, as in SwAV
and LC-Rec): each point goes to its best centre after per-centre prices that make every centre's
soft share about n/k. The remaining iterations are plain Lloyd from that balanced start, which is
stable on isotropic data and lets real, skewed data concentrate only as far as it lowers the error.
The returned labels are always nearest-centre labels, as greedy residual encoding will see them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rqsid import RqsidError

_CHUNK_FLOATS = 1 << 24  # floats in one chunk of the (rows x k) distance matrix: 64 MB
_CACHED_SCORE_FLOATS = 1 << 26  # balanced iterations keep the (n x k) scores when they fit in 256 MB, else recompute
SINKHORN_STEPS = 3  # price updates per balanced Lloyd iteration (warm-started: prices carry over between iterations)


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, d) float32
    labels: torch.Tensor  # (n,) int64
    counts: torch.Tensor  # (k,) int64 points per cluster
    inertia: float  # sum of squared distances to the assigned centre
    iterations: int  # Lloyd iterations run


def _chunk_rows(k: int) -> int:
    return max(1, _CHUNK_FLOATS // max(k, 1))


def nearest_centroid(X: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels int64 (n,), squared distances (n,)) of each row of X to its nearest centroid, chunked."""
    n = X.shape[0]
    centroid_norms = (centroids * centroids).sum(1)
    labels = torch.empty(n, dtype=torch.int64)
    sq_dists = torch.empty(n, dtype=X.dtype)
    step = _chunk_rows(centroids.shape[0])
    for start in range(0, n, step):
        block = X[start : start + step]
        dist = (block * block).sum(1, keepdim=True) - 2.0 * block @ centroids.T + centroid_norms
        best, idx = dist.min(1)
        sq_dists[start : start + step] = best.clamp_min_(0.0)
        labels[start : start + step] = idx
    return labels, sq_dists


def _sq_dist_to(X: torch.Tensor, x_norms: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Squared distances (n, m) from every row of X to each of a few points."""
    return (x_norms[:, None] - 2.0 * X @ points.T + (points * points).sum(1)).clamp_min_(0.0)


def kmeans_plus_plus(X: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (as in scikit-learn): each new centre is the best of 2 + ln k candidates
    drawn with probability proportional to the squared distance to the nearest chosen centre."""
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    x_norms = (X * X).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = _sq_dist_to(X, x_norms, X[first : first + 1])[:, 0]
    for _ in range(1, k):
        if float(closest.sum()) <= 0.0:  # every point sits on a centre: duplicates, see module doc
            chosen.append(int(torch.randint(n, (1,), generator=generator)))
            continue
        candidates = torch.multinomial(closest, trials, replacement=True, generator=generator)
        with_candidate = torch.minimum(closest[:, None], _sq_dist_to(X, x_norms, X[candidates]))
        best = int(with_candidate.sum(0).argmin())
        chosen.append(int(candidates[best]))
        closest = with_candidate[:, best]
    return X[torch.tensor(chosen)].clone()


def _reseed_empty(centroids: torch.Tensor, empty: torch.Tensor, X: torch.Tensor, sq_dists: torch.Tensor) -> None:
    """Move empty clusters onto the points worst served by their current centre."""
    farthest = torch.topk(sq_dists, int(empty.sum())).indices
    centroids[empty] = X[farthest]


def _scores(X: torch.Tensor, centroids: torch.Tensor, start: int, step: int) -> torch.Tensor:
    """Squared distances of rows start..start+step to every centre (a (rows, k) block)."""
    block = X[start : start + step]
    return ((block * block).sum(1, keepdim=True) - 2.0 * block @ centroids.T + (centroids * centroids).sum(1)).clamp_min_(0.0)


def balanced_assign(
    X: torch.Tensor, centroids: torch.Tensor, log_prices: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sinkhorn-balanced labels and their squared distances; `log_prices` (k,) is updated in place.

    Plan P_ij ~ exp(-d_ij / eps + log_price_j), rows normalised (each point's mass is 1); the prices
    are moved SINKHORN_STEPS times so that every centre's column sum approaches n/k, then each point
    takes the centre with the largest entry of its row. eps = `temperature` x the mean squared
    distance to the nearest centre, so the strength does not depend on the data's scale."""
    n, k = X.shape[0], centroids.shape[0]
    step = _chunk_rows(k)
    starts = range(0, n, step)
    cached = [_scores(X, centroids, s, step) for s in starts] if n * k <= _CACHED_SCORE_FLOATS else None
    blocks = (lambda: cached) if cached is not None else (lambda: (_scores(X, centroids, s, step) for s in starts))
    nearest_mean = sum(float(d.min(1).values.sum()) for d in blocks()) / n
    scale = -1.0 / max(temperature * nearest_mean, 1e-12)
    if cached is not None:  # scaled once: the Sinkhorn steps below reuse them
        for d in cached:
            d.mul_(scale)
    logits = (lambda: cached) if cached is not None else (lambda: (d.mul_(scale) for d in blocks()))
    target = n / k
    for _ in range(SINKHORN_STEPS):
        column_mass = torch.zeros(k, dtype=torch.float64)
        for z in logits():
            column_mass += torch.softmax(z + log_prices, 1).sum(0, dtype=torch.float64)
        # an unreached centre gets a large finite price rise instead of log(0)
        log_prices -= torch.log((column_mass / target).clamp_min(1e-12)).to(log_prices.dtype)
    labels = torch.empty(n, dtype=torch.int64)
    sq_dists = torch.empty(n, dtype=X.dtype)
    for start, z in zip(starts, logits(), strict=True):
        idx = (z + log_prices).argmax(1)
        labels[start : start + step] = idx
        sq_dists[start : start + step] = z.gather(1, idx[:, None])[:, 0] / scale
    return labels, sq_dists


def _lloyd_step(X: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, sq_dists: torch.Tensor) -> torch.Tensor:
    k, d = centroids.shape
    sums = torch.zeros(k, d, dtype=X.dtype).index_add_(0, labels, X)
    counts = torch.bincount(labels, minlength=k)
    updated = sums / counts.clamp_min(1).to(X.dtype)[:, None]
    empty = counts == 0
    if bool(empty.any()):
        _reseed_empty(updated, empty, X, sq_dists)
    return updated


def kmeans(
    X: torch.Tensor,
    k: int,
    *,
    iters: int = 50,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    init_sample: int | None = 50_000,
    tol: float = 1e-6,
    balance: float = 0.0,
    balanced_iters: int = 0,
) -> KMeansResult:
    """Cluster the rows of X (n, d) into k clusters.

    `init` gives starting centres instead of k-means++; `init_sample` caps the rows that seeding
    looks at (seeding costs k passes, Lloyd uses all rows). With `balance` > 0 (the Sinkhorn
    temperature, relative to the mean squared distance to the nearest centre), the first
    `balanced_iters` of the `iters` iterations use the balanced assignment (module doc). Stops when
    no label changes or the centres move less than `tol` x the data's total variance.
    """
    X = torch.as_tensor(X, dtype=torch.float32)
    if X.ndim != 2:
        raise RqsidError(f"k-means: expected a 2-D matrix, got shape {tuple(X.shape)}")
    n = X.shape[0]
    if n < k:
        raise RqsidError(f"k-means: {n} points but {k} clusters asked; give at least {k} items or lower the codebook size")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed or 0)
    centroids = init.clone().to(torch.float32) if init is not None else _seed(X, k, gen, init_sample)
    scale = float(X.var(0).sum()) * n if n > 1 else 1.0
    balanced = min(balanced_iters, iters) if balance > 0 else 0
    log_prices = torch.zeros(k)
    # assignment i (0 = before the first update) is balanced while i < balanced: the last one, after the
    # final update, is always nearest-centre, so the returned labels are what greedy encoding gives
    assign = lambda i: balanced_assign(X, centroids, log_prices, balance) if i < balanced else nearest_centroid(X, centroids)  # noqa: E731
    labels, sq_dists = assign(0)
    iterations = 0
    for iterations in range(1, iters + 1):
        updated = _lloyd_step(X, centroids, labels, sq_dists)
        shift = float(((updated - centroids) ** 2).sum())
        centroids = updated
        new_labels, sq_dists = assign(iterations)
        unchanged = torch.equal(new_labels, labels)
        labels = new_labels
        if iterations >= balanced and (unchanged or shift <= tol * scale / n):
            break
    counts = torch.bincount(labels, minlength=k)
    return KMeansResult(centroids, labels, counts, float(sq_dists.sum()), iterations)


def _seed(X: torch.Tensor, k: int, generator: torch.Generator, init_sample: int | None) -> torch.Tensor:
    n = X.shape[0]
    if init_sample is not None and n > max(init_sample, k):
        rows = torch.randperm(n, generator=generator)[:init_sample]
        return kmeans_plus_plus(X[rows], k, generator)
    return kmeans_plus_plus(X, k, generator)
