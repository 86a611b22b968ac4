"""Ranking metrics for leave-one-out evaluation, the head/tail split by layer-2 token, baselines.

Recall@k and NDCG@k with one held-out target per user, ranked over ALL items (the beam returns up to
beam_size items; a target outside the returned list counts as a miss):
    Recall@k = [rank < k],   NDCG@k = [rank < k] / log2(rank + 2)   (rank 0-based; ideal DCG = 1).

Head/tail split: rank the layer-2 codes of the UNPRUNED SIDs by how many catalog items carry them;
the head is the smallest set of most frequent codes that together cover at least half of the items,
the tail is everything else. A test user is a head user when their target's unpruned layer-2 code is
a head code. Pruning removes exactly those frequent tokens from SIDs, so the split must be computed
on the unpruned table (otherwise pruned items would have no layer-2 token to split by).
"""

from __future__ import annotations

import numpy as np

from rqsid import RqsidError
from rqsid.generator.data import SidVocab

KS = (5, 10)
HEAD_COVERAGE = 0.5


def ranking_metrics(ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
    """Per-user Recall@k and NDCG@k from (B, n) ranked item rows (-1 = empty slot) and (B,) targets."""
    ranked = np.asarray(ranked)
    hits = ranked == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    rank = np.where(found, hits.argmax(axis=1), np.iinfo(np.int64).max)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k > ranked.shape[1]:
            raise RqsidError(f"cannot compute @{k} from rankings of length {ranked.shape[1]}")
        inside = rank < k
        out[f"recall@{k}"] = inside.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(inside, 1.0 / np.log2(np.minimum(rank, k) + 2.0), 0.0)
    return out


def summarize(per_user: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Means of per-user metrics (over the users in `mask`), with the user count `n`."""
    mask = np.ones(len(next(iter(per_user.values()))), dtype=bool) if mask is None else mask
    n = int(mask.sum())
    out = {name: float(values[mask].mean()) if n else float("nan") for name, values in per_user.items()}
    out["n"] = n
    return out


def head_codes(layer2_codes: np.ndarray, coverage: float = HEAD_COVERAGE) -> np.ndarray:
    """The most frequent layer-2 codes that together cover >= `coverage` of the items (sorted codes)."""
    codes = np.asarray(layer2_codes)
    if (codes < 0).any():
        raise RqsidError(f"{int((codes < 0).sum())} items have no layer-2 code: the head/tail split needs the unpruned SIDs")
    values, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    covered = np.cumsum(counts[order]) / len(codes)
    n_head = int(np.searchsorted(covered, coverage - 1e-12) + 1)
    return np.sort(values[order[:n_head]])


def head_item_mask(unpruned_table, vocab: SidVocab, level: int = 2, coverage: float = HEAD_COVERAGE) -> np.ndarray:
    """(n_items,) bool over the vocab's item rows: the item's unpruned layer-`level` code is a head code."""
    codes = np.asarray(unpruned_table.codes)[:, level - 1]
    rows = vocab.rows_of(np.asarray(unpruned_table.item_ids, dtype=object))
    if (rows < 0).any() or len(rows) != vocab.n_items:
        raise RqsidError(f"the unpruned SID table covers {int((rows >= 0).sum())} of the model's {vocab.n_items} items")
    mask = np.zeros(vocab.n_items, dtype=bool)
    mask[rows] = np.isin(codes, head_codes(codes, coverage))
    return mask


def split_metrics(ranked: np.ndarray, targets: np.ndarray, head_items: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """{"all": ..., "head": ..., "tail": ...} metric summaries (head/tail only with a head mask)."""
    per_user = ranking_metrics(ranked, targets)
    out = {"all": summarize(per_user)}
    if head_items is not None:
        is_head = head_items[targets]
        out["head"] = summarize(per_user, is_head)
        out["tail"] = summarize(per_user, ~is_head)
    return out


def popularity_ranking(counts: np.ndarray, n_users: int, k: int = max(KS)) -> np.ndarray:
    """The same top-k most popular items for every user (ties: lower row first)."""
    top = np.argsort(-np.asarray(counts), kind="stable")[:k]
    return np.broadcast_to(top, (n_users, len(top)))


def format_table(results: dict[str, dict[str, dict[str, float]]], ks: tuple[int, ...] = KS) -> str:
    """Markdown table: one row per (model, subset)."""
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    lines = ["| model | subset | users | " + " | ".join(n.replace("recall", "Recall").replace("ndcg", "NDCG") for n in names) + " |"]
    lines.append("| --- | --- | ---: |" + " ---: |" * len(names))
    for model, subsets in results.items():
        for subset, m in subsets.items():
            lines.append(f"| {model} | {subset} | {m['n']} | " + " | ".join(f"{m[n]:.4f}" for n in names) + " |")
    return "\n".join(lines)
