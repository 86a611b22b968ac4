"""Residual k-means: the no-training baseline tokenizer.

Works in the standardised input space itself (no PCA, no encoder): level 1 clusters the
standardised embeddings, level l clusters what levels 1..l-1 left over, each by k-means whose first
iterations are balanced (rqsid.quantize.kmeans: plain Lloyd collapses on the near-isotropic residuals of
deep levels). Encoding is the same greedy residual assignment, so codes are exactly what fit saw.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rqsid.quantize.base import (
    Tokenizer,
    as_matrix,
    check_codes,
    encode_in_chunks,
    fit_context,
    fit_level,
    residual_assign,
    sum_codewords,
    torch_threads,
)


class ResidualKMeans(Tokenizer):
    kind = "rkmeans"

    def __init__(self, config=None):
        super().__init__(config)
        self.codebooks: torch.Tensor | None = None  # (L, K, d) in standardised space

    def fit(self, X: Any, progress: bool = True) -> "ResidualKMeans":
        X = self._prepare_fit(X)
        cfg = self.config
        residual = self.standardiser.forward(X)
        with fit_context(cfg.seed, cfg.threads):
            self.codebooks = self._fit_levels(residual, progress)
        return self

    def _fit_levels(self, residual: torch.Tensor, progress: bool) -> torch.Tensor:
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        codebooks, self.history = [], []
        for level in tqdm(range(cfg.levels), desc="residual k-means", disable=not progress):
            start = time.perf_counter()
            result = fit_level(residual, cfg, cfg.kmeans_iters, generator)
            residual = residual - result.centroids[result.labels]
            codebooks.append(result.centroids)
            self.history.append(
                {
                    "level": level + 1,
                    "inertia": result.inertia,
                    "iterations": result.iterations,
                    "utilisation": float((result.counts > 0).float().mean()),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
        return torch.stack(codebooks)

    def _quantised_space(self, X: torch.Tensor) -> torch.Tensor:
        return self.standardiser.forward(X)

    def _codebooks(self) -> torch.Tensor:
        return self.codebooks

    def _set_codebooks(self, codebooks: torch.Tensor) -> None:
        self.codebooks = codebooks.contiguous()

    def _level_iters(self) -> int:
        return self.config.kmeans_iters

    def encode(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X = as_matrix(X, self.input_dim)
        with torch_threads(self.config.threads):
            return encode_in_chunks(X, lambda block: residual_assign(self.standardiser.forward(block), self.codebooks)[0])

    def decode(self, codes: Any) -> np.ndarray:
        self._check_fitted()
        codes = check_codes(codes, self.levels, self.config.codebook_size)
        return self.standardiser.inverse(sum_codewords(codes, self.codebooks)).numpy()

    def _state(self) -> dict[str, Any]:
        return {"codebooks": self.codebooks}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.codebooks = state["codebooks"]
