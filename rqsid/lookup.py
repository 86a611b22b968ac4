"""Item id -> row: the one lookup the library uses to line up tables keyed by item id."""

from __future__ import annotations

import numpy as np

from rqsid import RqsidError


def positions(keys: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row of each key in `reference` (unique), -1 where absent."""
    keys = np.asarray(keys, dtype=str)
    reference = np.asarray(reference, dtype=str)
    if len(reference) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    order = np.argsort(reference, kind="stable")
    slot = np.searchsorted(reference[order], keys).clip(max=len(reference) - 1)
    found = reference[order][slot] == keys
    return np.where(found, order[slot], -1).astype(np.int64)


def align_embeddings(item_ids: np.ndarray, emb_ids: np.ndarray, X: np.ndarray, source: str = "") -> np.ndarray:
    """The rows of X (keyed by `emb_ids`) in the order of `item_ids`; RqsidError naming items without a vector."""
    rows = positions(item_ids, emb_ids)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise RqsidError(f"embeddings {source} lack {len(missing)} catalog items, e.g. "
                         f"{list(np.asarray(item_ids, dtype=object)[missing[:5]])}")
    return np.ascontiguousarray(X[rows], dtype=np.float32)
