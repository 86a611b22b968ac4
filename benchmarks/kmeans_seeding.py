"""Residual k-means seeding and balance: which fixes the collapse of deep levels (issue 15, item 1).

Residual k-means (3 levels x 256 codes, 50 iterations per level, 1 thread) on the study's controls
(isotropic Gaussian and uniform-on-the-sphere inputs of Scientific's size, 4,344 x 384) and on the
real Beauty and Scientific embeddings (standardised, as the tokenizer does), with:

- k-means++ seeds, plain Lloyd (the session-2 tokenizer);
- uniform random seeds (k distinct data points), plain Lloyd;
- k-means++ seeds, the first `balanced_iters` iterations Sinkhorn-balanced (rqsid.quantize.kmeans),
  for a few temperatures and lengths.

Per level: Gini of the code counts, the largest code's share of the items, and the mean squared
error left; then the collision rate of the 3-level codes.

    .venv/bin/python benchmarks/kmeans_seeding.py --embeddings /work/scratch/emb
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import header, load, log, md_table, new_result, write_result

from rqsid.metrics import gini
from rqsid.quantize.base import Standardiser
from rqsid.quantize.kmeans import kmeans
from rqsid.sids import collision_rate

LEVELS, SIZE, ITERS = 3, 256, 50
SETTINGS: dict[str, dict[str, Any]] = {
    "k-means++ seeds, plain Lloyd (session 2)": {},
    "random seeds, plain Lloyd": {"random_seeds": True},
    "balanced 0.02 x 15 iterations": {"balance": 0.02, "balanced_iters": 15},
    "balanced 0.05 x 20 iterations": {"balance": 0.05, "balanced_iters": 20},
    "balanced 0.1 x 20 iterations (default)": {"balance": 0.1, "balanced_iters": 20},
    "balanced 0.1 x 30 iterations": {"balance": 0.1, "balanced_iters": 30},
    "balanced 0.05 x 50 iterations (all)": {"balance": 0.05, "balanced_iters": 50},
}


def inputs(emb_dir: Path, n: int, dim: int) -> dict[str, np.ndarray]:
    from rqsid.embed import read_embeddings

    rng = np.random.default_rng(0)
    gaussian = rng.standard_normal((n, dim)).astype(np.float32)
    out = {"isotropic Gaussian": gaussian, "uniform on the sphere": gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)}
    for name in ("beauty", "scientific"):
        path = emb_dir / f"{name}.parquet"
        if path.exists():
            out[f"real {name}"] = read_embeddings(path)[1]
    return out


def residual_kmeans(X: np.ndarray, random_seeds: bool = False, **balance) -> dict[str, Any]:
    residual = Standardiser.fit(torch.from_numpy(X)).forward(torch.from_numpy(X))
    generator = torch.Generator().manual_seed(0)
    levels, codes = [], []
    start = time.process_time()
    for _ in range(LEVELS):
        init = residual[torch.randperm(len(residual), generator=generator)[:SIZE]].clone() if random_seeds else None
        result = kmeans(residual, SIZE, iters=ITERS, generator=generator, init=init, **balance)
        residual = residual - result.centroids[result.labels]
        counts = result.counts.numpy()
        levels.append(
            {
                "gini": gini(counts),
                "max_share": float(counts.max() / counts.sum()),
                "error": float((residual * residual).sum(1).mean()),
            }
        )
        codes.append(result.labels.numpy())
    return {"levels": levels, "collision_rate": float(collision_rate(np.stack(codes, 1))), "cpu_s": time.process_time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--embeddings", type=Path, default=Path("/work/scratch/emb"), help="folder with beauty/scientific.parquet"
    )
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for data, X in inputs(args.embeddings, 4344, 384).items():
        for label, setting in SETTINGS.items():
            load_before = load()
            res = residual_kmeans(X, **setting)
            row = {
                "input": data,
                "setting": label,
                "collision_rate": res["collision_rate"],
                "cpu_s": res["cpu_s"],
                "load": load_before,
            }
            for level, values in enumerate(res["levels"], 1):
                row |= {
                    f"gini_l{level}": values["gini"],
                    f"max_l{level}": values["max_share"],
                    f"error_l{level}": values["error"],
                }
            rows.append(row)
            log(
                f"{data} / {label}: Gini {[round(v['gini'], 3) for v in res['levels']]}, largest code "
                f"{[round(v['max_share'], 3) for v in res['levels']]}, error {res['levels'][-1]['error']:.1f}"
            )
    result = new_result(rows=rows, levels=LEVELS, size=SIZE, iters=ITERS)
    columns = [
        ("input", "input", ""),
        ("setting", "setting", ""),
        *[(f"Gini L{lv}", f"gini_l{lv}", ".3f") for lv in (1, 2, 3)],
        *[(f"largest code L{lv}", f"max_l{lv}", ".3f") for lv in (1, 2, 3)],
        *[(f"error after L{lv}", f"error_l{lv}", ".1f") for lv in (1, 2, 3)],
        ("collision rate", "collision_rate", ".4f"),
        ("CPU s", "cpu_s", ".1f"),
        ("load", "load", ".1f"),
    ]
    notes = [
        f"Residual k-means, {LEVELS} levels x {SIZE} codes, {ITERS} iterations per level, 1 thread, on standardised "
        "inputs; 'error after Ln' = mean squared residual (standardised space) left after level n. Synthetic inputs "
        "are 4,344 x 384 (Scientific's size), seed 0."
    ]
    lines = header("Residual k-means: seeding and balanced iterations", result, notes) + md_table(rows, columns)
    write_result("kmeans_seeding" + args.tag, result, "\n".join(lines))


if __name__ == "__main__":
    main()
