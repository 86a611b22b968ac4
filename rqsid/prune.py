"""Breaking the hourglass: remove a layer's most frequent tokens (adaptive top-K) or the whole layer.

Items whose layer-`level` token is among the K most frequent drop that token; their SID becomes
shorter (e.g. c1, c3 [, dedup], eos) and dedup tokens are recomputed on the shortened paths. The
removed codes are retired from the level's vocabulary and recorded in the table's `pruning` info.

The Gini that choose_k bounds is that of the RETAINED tokens over the codes still in play
(level size - K): the K retired codes can never be used again, so counting them as idle codes would
put a floor of about K / level size under the Gini and measure the pruning, not the spread of what
remains. Codes in play that no item uses still count as zeros. `rqsid.metrics.table_report` uses
the same definition (it reads the removed codes from the table), so the gate sees the same figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rqsid import RqsidError
from rqsid.config import PruneConfig
from rqsid.metrics import gini, table_report
from rqsid.sids import SidTable, path_keys


@dataclass(frozen=True)
class PruneResult:
    k: int  # tokens removed from the level (= level size when the layer was dropped)
    table: SidTable
    report: dict[str, Any]
    trace: list[dict[str, Any]]  # per K tried: k, gini (retained), collision_rate, passes
    dropped: bool = False  # True when no K passed and the layer was dropped instead
    met_bounds: bool = True  # False when no K passed (the fallback was applied)


def _check_level(table: SidTable, level: int) -> int:
    if not 1 <= level <= table.levels:
        raise RqsidError(f"level {level} does not exist; the SIDs have levels 1..{table.levels}")
    if table.pruning:
        raise RqsidError(f"SIDs are already pruned ({table.pruning.get('method')}); prune the unpruned SIDs")
    return level - 1


def token_ranking(column: np.ndarray, level_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes by descending item count (ties: lower code first), and the counts in that order."""
    counts = np.bincount(column[column >= 0], minlength=level_size)
    order = np.lexsort((np.arange(level_size), -counts))
    return order, counts[order]


def drop_layer(table: SidTable, level: int = 2) -> SidTable:
    """Remove layer `level` from every SID."""
    index = _check_level(table, level)
    codes = table.codes.copy()
    codes[:, index] = -1
    size = table.level_sizes[index]
    pruning = {"method": "drop_layer", "level": level, "k": size, "removed": {str(level): list(range(size))}}
    return table.with_codes(codes, pruning)


def prune_top_k(table: SidTable, k: int, level: int = 2) -> SidTable:
    """Items whose layer-`level` token is among the k most frequent drop that token."""
    index = _check_level(table, level)
    size = table.level_sizes[index]
    if not 0 <= k <= size:
        raise RqsidError(f"k={k} must be between 0 and the level size {size}")
    removed = np.sort(token_ranking(table.codes[:, index], size)[0][:k])
    codes = table.codes.copy()
    codes[np.isin(codes[:, index], removed), index] = -1
    pruning = {"method": "top_k", "level": level, "k": int(k), "removed": {str(level): removed.tolist()}}
    return table.with_codes(codes, pruning)


def retained_gini_by_k(counts_desc: np.ndarray) -> np.ndarray:
    """Gini of the retained counts counts_desc[K:] for K = 0..len (0 where nothing is retained)."""
    return np.array([gini(counts_desc[k:]) for k in range(len(counts_desc) + 1)])


def _shared_mask(keys: np.ndarray) -> np.ndarray:
    _, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    return sizes[inverse] > 1


def collision_rate_by_k(codes: np.ndarray, index: int, level_size: int) -> np.ndarray:
    """Collision rate (before dedup) after top-K removal at column `index`, for K = 0..level_size.

    An item keeps its token while K <= its token's rank. Items that keep it collide exactly as in
    the full paths (a full-path group shares the token, so it leaves as a whole); items that lost it
    collide inside their shortened-path group once that group holds two or more of them.
    """
    n = len(codes)
    order, _ = token_ranking(codes[:, index], level_size)
    rank_of_code = np.empty(level_size, dtype=np.int64)
    rank_of_code[order] = np.arange(level_size)
    column = codes[:, index]
    rank = np.where(column >= 0, rank_of_code[np.maximum(column, 0)], -1)
    # items still holding their token at K and sharing their full path: rank >= K
    shared = _shared_mask(path_keys(codes)) & (rank >= 0)
    kept_collided = np.cumsum(np.bincount(rank[shared], minlength=level_size + 1)[::-1])[::-1]
    # shortened paths: the 2nd arrival in a group adds 2 collided items, each later one adds 1
    short = codes.copy()
    short[:, index] = -1
    group = np.unique(path_keys(short), return_inverse=True)[1].reshape(-1)
    arrival = rank + 1  # the item has lost its token for every K >= arrival
    by_group = np.lexsort((arrival, group))
    group_sorted = group[by_group]
    starts = np.flatnonzero(np.r_[True, group_sorted[1:] != group_sorted[:-1]])
    position = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    weight = np.select([position == 1, position >= 2], [2, 1], 0)
    pruned_collided = np.cumsum(np.bincount(arrival[by_group], weights=weight, minlength=level_size + 1))
    return (kept_collided[: level_size + 1] + pruned_collided[: level_size + 1]) / max(n, 1)


def choose_k(
    table: SidTable,
    gini_threshold: float,
    max_collision_rate: float,
    level: int = 2,
    max_k: int | None = None,
    fallback: str = "drop_layer",
) -> PruneResult:
    """The smallest K whose retained layer-`level` Gini <= gini_threshold and whose collision rate
    (before dedup) <= max_collision_rate. When no K up to max_k (default: level size) passes, the
    fallback applies: "drop_layer" drops the layer (result.dropped), "keep" returns the table
    unpruned (K = 0) so that the gate rejects it; either way result.met_bounds is False. Dropping
    gives the highest collision rate of all K, so "keep" suits catalogs where collisions matter more.

    A layer whose Gini already passes is left as it is (K = 0) whatever its collision rate: removing
    tokens only merges paths, so the collision rate never falls as K grows (see collision_rate_by_k)
    and no pruning, least of all dropping the layer, could bring it under the bound."""
    index = _check_level(table, level)
    size = table.level_sizes[index]
    max_k = size if max_k is None else min(int(max_k), size)
    _, counts_desc = token_ranking(table.codes[:, index], size)
    ginis = retained_gini_by_k(counts_desc)[: max_k + 1]
    collisions = collision_rate_by_k(table.codes, index, size)[: max_k + 1]
    passes = (ginis <= gini_threshold) & (collisions <= max_collision_rate)
    passes[0] = ginis[0] <= gini_threshold
    trace = [{"k": k, "gini": float(g), "collision_rate": float(c), "passes": bool(p)}
             for k, (g, c, p) in enumerate(zip(ginis, collisions, passes))]
    if passes.any():
        k = int(np.argmax(passes))
        pruned = table if k == 0 else prune_top_k(table, k, level)
        return PruneResult(k, pruned, table_report(pruned), trace)
    if fallback == "keep":
        return PruneResult(0, table, table_report(table), trace, met_bounds=False)
    if fallback != "drop_layer":
        raise RqsidError(f"unknown prune fallback {fallback!r}; use 'drop_layer' or 'keep'")
    dropped = drop_layer(table, level)
    return PruneResult(size, dropped, table_report(dropped), trace, dropped=True, met_bounds=False)


def auto_prune(table: SidTable, config: PruneConfig | None = None) -> PruneResult:
    """choose_k with the `prune` section of the config (the pipeline's entry point)."""
    config = config or PruneConfig()
    if config.level > table.levels:
        raise RqsidError(f"prune.level={config.level} but the SIDs have {table.levels} levels")
    return choose_k(table, config.gini_threshold, config.max_collision_rate, config.level, config.max_k,
                    config.fallback)
