"""Per-layer distribution report of SID codes: how evenly each layer spreads items over its codes.

Definitions (per layer l with K codes "in play", over the items that kept a token at layer l):
- counts: items per code, all level-size codes listed (codes retired by pruning stay at 0).
- entropy_bits: -sum p log2 p; entropy_norm: entropy_bits / log2(K).
- gini: Gini coefficient of the K counts, unused codes counted as zeros. 0 = every code equally
  used; (K-1)/K = every item on one code.
- std: population standard deviation of the K counts; utilisation: share of the K codes used;
  max_share: the largest code's share of the layer's items.
K is the level size minus the codes that pruning retired from that level (`removed`): a retired
code can no longer be used, so counting it as an idle code would make the Gini of a pruned layer
reflect the pruning, not the spread of the tokens that remain (see rqsid.prune).
Paths: the prefix of depth d is the item's codes at levels 1..d (a pruned level is a skip, itself
a distinct step); path_sparsity = distinct prefixes / prod(level sizes up to d); mean_fanout =
distinct prefixes at d / distinct prefixes at d-1. collision_rate: share of items whose full path
(before dedup) is shared with another item.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from rqsid.sids import SidTable, path_keys, collision_rate

# Hourglass: layer 2's Gini exceeds the larger of its neighbours' by more than this margin.
HOURGLASS_GINI_MARGIN = 0.1


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (zeros included); 0.0 when all are zero or one code."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    total = x.sum()
    if len(x) < 2 or total <= 0:
        return 0.0
    rank = np.arange(1, len(x) + 1)
    return float(np.sum((2 * rank - len(x) - 1) * x) / (len(x) * total))


def entropy_bits(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum() + 0.0)


def layer_stats(column: np.ndarray, level_size: int, removed: Sequence[int] = ()) -> dict[str, Any]:
    """Stats of one layer's codes (-1 = no token here); `removed` codes are out of play."""
    kept = column[column >= 0]
    counts = np.bincount(kept, minlength=level_size)
    in_play = np.ones(level_size, dtype=bool)
    in_play[list(removed)] = False
    k = int(in_play.sum())
    live = counts[in_play]
    n = int(len(kept))
    stats: dict[str, Any] = {"k": k, "level_size": int(level_size), "n_removed": level_size - k,
                             "counts": counts.tolist(), "n_items": n}
    if n == 0:  # the layer was dropped: nothing to measure
        return stats | dict.fromkeys(("entropy_bits", "entropy_norm", "gini", "std", "utilisation", "max_share"))
    h = entropy_bits(live)
    return stats | {
        "entropy_bits": h,
        "entropy_norm": h / math.log2(k) if k > 1 else 0.0,
        "gini": gini(live),
        "std": float(live.std()),
        "utilisation": float((live > 0).mean()),
        "max_share": float(live.max() / n),
    }


def depth_stats(codes: np.ndarray, level_sizes: Sequence[int]) -> list[dict[str, Any]]:
    out, previous = [], 1
    for depth in range(1, codes.shape[1] + 1):
        distinct = len(np.unique(path_keys(codes[:, :depth])))
        possible = float(np.prod(np.asarray(level_sizes[:depth], dtype=np.float64)))
        out.append({"depth": depth, "distinct_prefixes": distinct, "path_sparsity": distinct / possible,
                    "mean_fanout": distinct / previous})
        previous = distinct
    return out


def distribution_report(
    codes: np.ndarray, level_sizes: Sequence[int], removed: Mapping[int, Sequence[int]] | None = None
) -> dict[str, Any]:
    """The per-layer report of an (n, L) code matrix. `removed`: 1-based level -> codes retired by pruning."""
    codes = np.asarray(codes, dtype=np.int64)
    removed = removed or {}
    layers = [
        {"level": level + 1} | layer_stats(codes[:, level], level_sizes[level], removed.get(level + 1, ()))
        for level in range(codes.shape[1])
    ]
    return {
        "n_items": int(len(codes)),
        "level_sizes": [int(s) for s in level_sizes],
        "layers": layers,
        "depths": depth_stats(codes, level_sizes),
        "collision_rate": collision_rate(codes),
    }


def table_report(table: SidTable) -> dict[str, Any]:
    """Report of a SidTable, with its pruned codes out of play, plus SID length statistics."""
    report = distribution_report(table.codes, table.level_sizes, table.removed_codes())
    lengths = table.sid_lengths()
    report["sid_length"] = {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())}
    report["dedup_size"] = table.dedup_size
    report["pruning"] = table.pruning
    report["hourglass"] = is_hourglass(report)
    return report


def is_hourglass(report: Mapping[str, Any], margin: float = HOURGLASS_GINI_MARGIN, level: int = 2) -> bool:
    """True when layer `level` is markedly more concentrated than its neighbours:
    gini[level] > max(gini[level - 1], gini[level + 1]) + margin (neighbours that exist and are measured).
    A dropped layer (no items) is not an hourglass."""
    ginis = {layer["level"]: layer["gini"] for layer in report["layers"]}
    middle = ginis.get(level)
    neighbours = [g for lvl, g in ginis.items() if abs(lvl - level) == 1 and g is not None]
    if middle is None or not neighbours:
        return False
    return middle > max(neighbours) + margin


def report_to_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report as plain JSON types (keys `n_items`, `layers`, `depths`, `collision_rate`, ...)."""
    return json.loads(json.dumps(report, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


LAYER_ROWS = (
    ("items", "n_items", "d"), ("codes in play", "k", "d"), ("entropy bits", "entropy_bits", ".3f"),
    ("entropy norm", "entropy_norm", ".3f"), ("gini", "gini", ".3f"), ("std", "std", ".2f"),
    ("utilisation", "utilisation", ".3f"), ("max share", "max_share", ".4f"),
)
DEPTH_ROWS = (("distinct prefixes", "distinct_prefixes", "d"), ("path sparsity", "path_sparsity", ".3g"),
              ("mean fan-out", "mean_fanout", ".2f"))


def _summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for layer, depth in zip(report["layers"], report["depths"]):
        prefix = f"L{layer['level']}"
        rows += [(f"{prefix} {label}", _fmt(layer[key], spec)) for label, key, spec in LAYER_ROWS]
        rows += [(f"{prefix} {label}", _fmt(depth[key], spec)) for label, key, spec in DEPTH_ROWS]
    rows.append(("collision rate", _fmt(report["collision_rate"], ".4f")))
    rows.append(("hourglass (layer 2)", "yes" if is_hourglass(report) else "no"))
    if "sid_length" in report:
        rows.append(("mean SID length", _fmt(report["sid_length"]["mean"], ".3f")))
    return rows


def format_report(report: Mapping[str, Any]) -> str:
    """A readable table: one column per layer."""
    layers, depths = report["layers"], report["depths"]
    header = ["metric"] + [f"layer {layer['level']}" for layer in layers]
    body = [[label] + [_fmt(layer[key], spec) for layer in layers] for label, key, spec in LAYER_ROWS]
    body += [[label] + [_fmt(depth[key], spec) for depth in depths] for label, key, spec in DEPTH_ROWS]
    lines = _aligned([header] + body)
    lines.append(f"items {report['n_items']}, collision rate {report['collision_rate']:.4f}, "
                 f"hourglass at layer 2: {'yes' if is_hourglass(report) else 'no'}")
    if report.get("pruning"):
        pruning = report["pruning"]
        lines.append(f"pruning: {pruning.get('method')} level {pruning.get('level')} k {pruning.get('k')}")
    return "\n".join(lines)


def format_side_by_side(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Several reports in columns (one per name), rows = metric per layer."""
    names = list(reports)
    summaries = [dict(_summary_rows(reports[name])) for name in names]
    labels = list(dict.fromkeys(label for summary in summaries for label in summary))
    body = [[label] + [summary.get(label, "") for summary in summaries] for label in labels]
    return "\n".join(_aligned([["metric"] + names] + body))


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def balance_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a trend over index versions needs: per-layer Gini and normalised entropy, and collisions."""
    layers = [{"level": layer["level"], "gini": layer["gini"], "entropy_norm": layer["entropy_norm"]}
              for layer in report["layers"]]
    return {"layers": layers, "collision_rate": report["collision_rate"]}
