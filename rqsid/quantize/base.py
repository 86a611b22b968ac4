"""What every tokenizer shares: input checks, standardisation, residual assignment, save/load plumbing.

A tokenizer maps item embeddings X (n, d) to codes (n, L), one code per level, and back. Inputs are
standardised inside (per-dimension mean and std of the training data, stored with the model), so
callers always speak in the embedding space.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rqsid import RqsidError, __version__
from rqsid.config import QuantizerConfig
from rqsid.quantize.kmeans import KMeansResult, kmeans, nearest_centroid

META_FILE = "meta.json"
STATE_FILE = "state.pt"
FORMAT = "rqsid.tokenizer"
_MIN_STD = 1e-6  # a constant dimension is divided by this instead of 0
ENCODE_CHUNK = 65_536  # rows checked / standardised / encoded at a time: memory O(chunk), not O(n), besides X


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with this many torch threads (None = leave as is), then restore the caller's count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def fit_context(seed: int, threads: int | None) -> Iterator[None]:
    """Seeded global RNG, deterministic kernels and the chosen thread count for one fit, then the
    caller's settings back (its RNG stream included, so fitting never perturbs other code)."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]), torch_threads(threads):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


def _rows(mask: torch.Tensor, limit: int = 5) -> str:
    idx = torch.nonzero(mask).flatten().tolist()
    shown = ", ".join(map(str, idx[:limit]))
    return f"[{shown}{', ...' if len(idx) > limit else ''}] ({len(idx)} rows)"


def as_matrix(X: Any, expected_dim: int | None = None) -> torch.Tensor:
    """Embeddings as a float32 (n, d) tensor; a clear error on shape, dimension or non-finite rows."""
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X, dtype=np.float32)
        X = torch.from_numpy(X if X.flags.writeable else X.copy())  # read-only views (Arrow) are copied
    X = X.to(torch.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise RqsidError(f"embeddings must be a non-empty (items x dims) matrix, got shape {tuple(X.shape)}")
    if expected_dim is not None and X.shape[1] != expected_dim:
        raise RqsidError(f"embeddings have {X.shape[1]} dims but the tokenizer was fit on {expected_dim}")
    # per row block: torch.isfinite on all of X would allocate |X| floats + 2 masks (~2.3 GB at 1M x 384)
    bad = torch.cat([~torch.isfinite(X[i : i + ENCODE_CHUNK]).all(1) for i in range(0, X.shape[0], ENCODE_CHUNK)])
    if bool(bad.any()):
        raise RqsidError(f"embedding rows {_rows(bad)} contain NaN or inf")
    return X.contiguous()


class Standardiser:
    """Per-dimension centring and scaling, fitted on the training embeddings."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, X: torch.Tensor) -> "Standardiser":
        return cls(X.mean(0), X.std(0, correction=0).clamp_min(_MIN_STD))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean) / self.std

    def inverse(self, Z: torch.Tensor) -> torch.Tensor:
        return Z * self.std + self.mean

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}


def residual_assign(residual: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantisation of rows against codebooks (L, K, d): (codes (n, L), final residual)."""
    residual = residual.clone()
    codes = torch.empty(residual.shape[0], codebooks.shape[0], dtype=torch.int64)
    for level, codebook in enumerate(codebooks):
        codes[:, level], _ = nearest_centroid(residual, codebook)
        residual -= codebook[codes[:, level]]
    return codes, residual


def encode_in_chunks(
    X: torch.Tensor, encode_block: Callable[[torch.Tensor], torch.Tensor], chunk: int | None = None
) -> np.ndarray:
    """int64 codes (n, L) of X, `encode_block` applied to one row block at a time (no full-size copies of X)."""
    chunk = chunk or ENCODE_CHUNK
    parts = [encode_block(X[start : start + chunk]) for start in range(0, X.shape[0], chunk)]
    return torch.cat(parts).numpy()


def sum_codewords(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of each row's codewords; a code of -1 (level pruned away) contributes nothing."""
    total = torch.zeros(codes.shape[0], codebooks.shape[2], dtype=codebooks.dtype)
    for level, codebook in enumerate(codebooks):
        kept = codes[:, level] >= 0
        total[kept] += codebook[codes[kept, level]]
    return total


def check_codes(codes: Any, levels: int, size: int) -> torch.Tensor:
    codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
    if codes.ndim != 2 or codes.shape[1] != levels:
        raise RqsidError(f"codes must have shape (items, {levels}), got {tuple(codes.shape)}")
    codes = codes.to(torch.int64)
    bad = ((codes < -1) | (codes >= size)).any(1)
    if bool(bad.any()):
        raise RqsidError(f"code rows {_rows(bad)} hold codes outside [-1, {size - 1}]")
    return codes


MAX_LEVELS = 8  # QuantizerConfig.levels' bound


def fit_level(residual: torch.Tensor, config: QuantizerConfig, iters: int, generator: torch.Generator) -> KMeansResult:
    """One level's codebook: k-means of what the levels above leave, its first `kmeans_balanced_share` of
    iterations assigning by the balanced plan (rqsid.quantize.kmeans)."""
    return kmeans(residual, config.codebook_size, iters=iters, generator=generator, balance=config.kmeans_balance,
                  balanced_iters=round(config.kmeans_balanced_share * iters))


def levels_for_catalog(n_items: int, min_levels: int, up_to_items: int | None, growth: float,
                       max_levels: int = MAX_LEVELS) -> int:
    """min_levels for catalogs of up to `up_to_items` items, one more per `growth`-fold growth beyond
    (QuantizerConfig says why); min_levels when up_to_items is None."""
    levels, capacity = min_levels, up_to_items
    while capacity is not None and n_items > capacity and levels < max_levels:
        levels += 1
        capacity *= growth
    return levels


class Tokenizer(ABC):
    """Common interface; subclasses set `kind` and implement the model-specific parts."""

    kind: str = ""

    def __init__(self, config: QuantizerConfig | None = None):
        self.config = config or QuantizerConfig(method=self.kind)
        self.input_dim: int | None = None
        self.standardiser: Standardiser | None = None
        self.history: list[dict[str, Any]] = []
        self.code_space: dict[str, Any] = {}  # how fit sized the code space, and on how many items it fitted

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.config.codebook_size] * self.config.levels

    @abstractmethod
    def fit(self, X: Any, progress: bool = True) -> "Tokenizer": ...

    def _prepare_fit(self, X: Any) -> torch.Tensor:
        """Size the code space from the catalog (config.levels may grow), draw the fitting sample and fit
        the standardiser on it; returns the sample, unstandardised."""
        X = as_matrix(X)
        cfg = self.config
        n = X.shape[0]
        levels = levels_for_catalog(n, cfg.levels, cfg.levels_up_to_items, cfg.items_growth_per_level)
        if levels != cfg.levels:
            self.config = cfg = cfg.model_copy(update={"levels": levels})
        X = self._fit_sample(X)
        self.code_space = {
            "n_items": n,
            "fit_items": X.shape[0],
            "levels": levels,
            "codebook_size": cfg.codebook_size,
            "levels_up_to_items": cfg.levels_up_to_items,
            "items_growth_per_level": cfg.items_growth_per_level,
        }
        self.input_dim = X.shape[1]
        self.standardiser = Standardiser.fit(X)
        return X

    def _fit_sample(self, X: torch.Tensor) -> torch.Tensor:
        """The rows a fit uses: all, or a seeded random sample of config.fit_sample of them (in catalog order)."""
        cfg, n = self.config, X.shape[0]
        if cfg.fit_sample is None or n <= cfg.fit_sample:
            return X
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.fit_sample]
        return X[torch.sort(rows).values]

    def add_level(self, X: Any) -> "Tokenizer":
        """One more code level on top of the fitted ones, which stay as they are: k-means (balanced as the levels
        were seeded) on what the fitted levels leave of the fitting sample. Codes of the existing levels do not
        change; the new level splits the items that share a path. fit_sized uses it instead of a refit."""
        self._check_fitted()
        cfg = self.config
        if cfg.levels >= MAX_LEVELS:
            raise RqsidError(f"a tokenizer has at most {MAX_LEVELS} levels")
        X = self._fit_sample(as_matrix(X, self.input_dim))
        with fit_context(cfg.seed, cfg.threads):
            codebooks = self._codebooks()
            residual = residual_assign(self._quantised_space(X), codebooks)[1]
            result = fit_level(residual, cfg, self._level_iters(), torch.Generator().manual_seed(cfg.seed + cfg.levels))
            self._set_codebooks(torch.cat([codebooks, result.centroids[None]]))
        self.config = cfg.model_copy(update={"levels": cfg.levels + 1})
        self.code_space["levels"] = cfg.levels + 1
        self.code_space.setdefault("added_levels", []).append({"level": cfg.levels + 1, "inertia": result.inertia})
        return self

    @abstractmethod
    def _quantised_space(self, X: torch.Tensor) -> torch.Tensor:
        """Rows (unstandardised inputs) in the space the codebooks quantise."""

    @abstractmethod
    def _codebooks(self) -> torch.Tensor:
        """(levels, codebook_size, d) codebooks."""

    @abstractmethod
    def _set_codebooks(self, codebooks: torch.Tensor) -> None: ...

    @abstractmethod
    def _level_iters(self) -> int:
        """k-means iterations for a level (as the fit seeds its levels)."""

    @abstractmethod
    def encode(self, X: Any) -> np.ndarray: ...

    @abstractmethod
    def decode(self, codes: Any) -> np.ndarray: ...

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...

    def _check_fitted(self) -> None:
        if self.standardiser is None:
            raise RqsidError(f"the {self.kind} tokenizer is not fitted; call fit() or load_tokenizer() first")

    def reconstruction_errors(self, X: Any) -> np.ndarray:
        """Squared L2 error of decode(encode(x)) per item, in input space."""
        self._check_fitted()
        X = as_matrix(X, self.input_dim).numpy()
        return ((self.decode(self.encode(X)) - X) ** 2).sum(1)

    def reconstruction_error(self, X: Any) -> float:
        """Mean over items of the squared L2 reconstruction error in input space."""
        return float(self.reconstruction_errors(X).mean())

    def save(self, directory: str | Path) -> Path:
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({**self._state(), **self.standardiser.state()}, directory / STATE_FILE)
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "rqsid_version": __version__,
            "input_dim": self.input_dim,
            "config": self.config.model_dump(),
            "history": self.history,
            "code_space": self.code_space,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], state: dict[str, Any]) -> "Tokenizer":
        tok = cls(QuantizerConfig.model_validate(meta["config"]))
        tok.input_dim = int(meta["input_dim"])
        tok.history = list(meta.get("history", []))
        tok.code_space = dict(meta.get("code_space", {}))
        tok.standardiser = Standardiser(state["mean"], state["std"])
        tok._load_state(state)
        return tok


def read_saved(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists() or not (directory / STATE_FILE).exists():
        raise RqsidError(f"no saved tokenizer in {directory} (expected {META_FILE} and {STATE_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise RqsidError(f"{meta_path} is not an rqsid tokenizer (format={meta.get('format')!r})")
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    return meta, state
