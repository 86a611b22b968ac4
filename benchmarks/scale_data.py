"""Realistic large catalogs for the scale benchmark: real item embeddings mixed and perturbed.

The pool is the real all-MiniLM-L6-v2 embeddings of Amazon Beauty, Scientific and Sports (34,802
items). Each synthetic item is a new product "between" two real neighbours:

    x = normalise(a + u (b - a) + s * e),   s = s_max * v ** p,  v ~ U(0, 1)

a: a real item drawn uniformly from the pool; b: one of a's 10 nearest real neighbours in its own
catalog (cosine), drawn uniformly; u ~ U(0, 1): where on the segment a..b the new item sits;
e ~ N(0, C_local): noise shaped like the differences between real neighbours (C_local = covariance of
x_i - x_nn(i) over the pool), so items move only in the directions along which real neighbours
differ, not across topics; s: a per-item noise scale, small for some items (near-copies of a real
one, like the colour and size variants that real catalogs are full of) and larger for others.
(s_max, p) are calibrated (`calibrate`) so that a sample of the pool's size has the real pool's
nearest-neighbour cosines (10th, 50th and 90th percentile): one scale for all items matched the
median but left out the near-duplicates (90th percentile 0.83 instead of 0.95), which are what
makes SIDs collide. A 1M catalog is then 29x denser than the pool, as a real catalog grown 29x in
the same product space would be, and its covariance spectrum follows the real one (`spectrum_plot`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REAL = ("beauty", "scientific", "sports")
NEIGHBOURS = 10
CHUNK = 100_000


def nearest_neighbours(X: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices (n, k), cosines (n, k)) of each row's k most similar other rows (rows are unit vectors)."""
    n = X.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    cos = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        sims = X[start : start + block] @ X.T
        sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf  # not itself
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, 1)
        order = np.argsort(-top_sims, axis=1)
        idx[start : start + block] = np.take_along_axis(top, order, 1)
        cos[start : start + block] = np.take_along_axis(top_sims, order, 1)
    return idx, cos


def nn_cosine_to(queries: np.ndarray, X: np.ndarray, block: int = 1024, exclude_self: bool = False) -> np.ndarray:
    """Each query's largest cosine to a row of X (with exclude_self, queries are X's first rows)."""
    best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
    for start in range(0, X.shape[0], CHUNK):
        part = X[start : start + CHUNK]
        for q in range(0, queries.shape[0], block):
            sims = queries[q : q + block] @ part.T
            if exclude_self:
                rows = np.arange(q, q + sims.shape[0])
                inside = (rows >= start) & (rows < start + part.shape[0])
                sims[np.nonzero(inside)[0], rows[inside] - start] = -np.inf
            best[q : q + block] = np.maximum(best[q : q + block], sims.max(1))
    return best


class RealPool:
    """The real embeddings, their within-catalog neighbours and the local noise shape."""

    def __init__(self, emb_dir: Path, names: tuple[str, ...] = REAL):
        from rqsid.embed import read_embeddings

        parts, neighbours, offset = [], [], 0
        self.sizes: dict[str, int] = {}
        for name in names:
            _, X = read_embeddings(Path(emb_dir) / f"{name}.parquet")
            X = X / np.linalg.norm(X, axis=1, keepdims=True)
            idx, _ = nearest_neighbours(X, NEIGHBOURS)
            parts.append(X)
            neighbours.append(idx + offset)
            offset += X.shape[0]
            self.sizes[name] = X.shape[0]
        self.X = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        self.neighbours = np.concatenate(neighbours)
        differences = self.X - self.X[self.neighbours[:, 0]]
        local = np.cov(differences, rowvar=False)
        values, vectors = np.linalg.eigh(local)
        self.noise_basis = (vectors * np.sqrt(np.clip(values, 0, None))).astype(np.float32)  # e = z @ basis.T

    def draw(self, m: int, rng: np.random.Generator, noise_max: float, noise_power: float) -> np.ndarray:
        a = rng.integers(self.X.shape[0], size=m)
        b = self.neighbours[a, rng.integers(NEIGHBOURS, size=m)]
        u = rng.uniform(0.0, 1.0, size=(m, 1)).astype(np.float32)
        X = self.X[a] + u * (self.X[b] - self.X[a])
        scale = (noise_max * rng.uniform(0.0, 1.0, size=(m, 1)) ** noise_power).astype(np.float32)
        X += scale * (rng.standard_normal((m, self.X.shape[1]), dtype=np.float32) @ self.noise_basis.T)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        return X


QUANTILES = (0.1, 0.5, 0.9)


def calibrate(pool: RealPool, noise_max=(1.25, 1.5, 1.75, 2.0), noise_power=(1.0, 1.5, 2.0), queries: int = 3000,
              seed: int = 1) -> dict[str, Any]:
    """(s_max, p) whose pool-sized sample is nearest the real pool's nearest-neighbour cosine percentiles
    (sum of absolute differences of the 10th, 50th and 90th)."""
    n = pool.X.shape[0]
    real = np.quantile(_nn_excluding_self(pool.X, np.random.default_rng(seed).choice(n, queries, replace=False)), QUANTILES)
    rows = []
    for top in noise_max:
        for power in noise_power:
            sample = pool.draw(n, np.random.default_rng(seed), top, power)  # drawn rows are in random order
            synthetic = np.quantile(_nn_excluding_self(sample, np.arange(queries)), QUANTILES)
            rows.append({"noise_max": top, "noise_power": power, "quantiles": synthetic.round(4).tolist(),
                         "distance": float(np.abs(synthetic - real).sum())})
    best = min(rows, key=lambda r: r["distance"])
    return {"real_quantiles": real.round(4).tolist(), "grid": rows, "noise_max": best["noise_max"],
            "noise_power": best["noise_power"]}


def _nn_excluding_self(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    sims = X[rows] @ X.T
    sims[np.arange(len(rows)), rows] = -np.inf
    return sims.max(1)


def write_realistic(path: Path, n: int, pool: RealPool, noise_max: float, noise_power: float, seed: int = 0) -> Path:
    """n mixed-and-perturbed embeddings as an embeddings parquet, written CHUNK rows at a time."""
    from rqsid.embed import embeddings_table

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, CHUNK):
        X = pool.draw(min(CHUNK, n - start), rng, noise_max, noise_power)
        table = embeddings_table([f"item-{i}" for i in range(start, start + X.shape[0])], X)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.replace(path)
    return path


def spectrum(X: np.ndarray) -> np.ndarray:
    """Eigenvalues of the covariance, largest first."""
    return np.linalg.eigvalsh(np.cov(X, rowvar=False))[::-1]


def spectrum_plot(pool: RealPool, synthetic: dict[str, np.ndarray], out: Path, nn: dict[str, np.ndarray]) -> Path:
    """Left: covariance spectra of the real catalogs, the pool and the synthetic ones; right: nearest-neighbour cosines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    offset = 0
    for name, size in pool.sizes.items():
        left.semilogy(spectrum(pool.X[offset : offset + size]), lw=1, alpha=0.6, label=f"real {name} ({size:,})")
        offset += size
    left.semilogy(spectrum(pool.X), lw=2, color="black", label=f"real pool ({pool.X.shape[0]:,})")
    for label, X in synthetic.items():
        left.semilogy(spectrum(X), lw=2, ls="--", label=label)
    left.set_ylim(bottom=1e-6)  # all-MiniLM-L6-v2 has 2 constant dimensions (variance ~1e-33): off the scale
    left.set_xlabel("principal component")
    left.set_ylabel("variance (eigenvalue of the covariance)")
    left.set_title("Covariance spectrum")
    left.legend(fontsize=8)
    bins = np.linspace(0.3, 1.0, 71)
    for label, values in nn.items():
        right.hist(values, bins=bins, histtype="step", density=True, lw=1.5, label=label)
    right.set_xlabel("cosine to the nearest other item")
    right.set_title("Nearest-neighbour similarity")
    right.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
