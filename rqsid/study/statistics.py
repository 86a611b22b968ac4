"""The statistics behind the verdicts: per-layer means and spreads over seeds, the hourglass gap, and
paired / two-sample differences of per-user generator hits with their standard errors."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rqsid.study.variants import GeneratorRun

LAYER_KEYS = ("gini", "entropy_bits", "entropy_norm", "std", "utilisation", "max_share")


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number for a human: "n/a" when it was not measured (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("source", "method", "level"),
              metrics: Sequence[str] = LAYER_KEYS + ("collision_rate",)) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of each metric, per group of `keys`; `n` = seeds."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, group, strict=True)) | {"n": len(members)}
        for metric in metrics:
            values = np.array([m[metric] for m in members if m.get(metric) is not None], dtype=np.float64)
            entry[f"{metric}_mean"] = float(values.mean()) if len(values) else None
            entry[f"{metric}_std"] = float(values.std()) if len(values) else None
        out.append(entry)
    return out


def profile(summary: Sequence[Mapping[str, Any]], source: str, method: str) -> list[Mapping[str, Any]]:
    """The summary rows of one (source, method), by level."""
    return sorted((r for r in summary if r["source"] == source and r["method"] == method), key=lambda r: r["level"])


def hourglass_gap(ginis: Sequence[float | None], level: int = 2) -> float | None:
    """Gini of layer `level` minus the larger of its neighbours' (positive = more concentrated);
    the hourglass of rqsid.metrics.is_hourglass is a gap above HOURGLASS_GINI_MARGIN."""
    middle = ginis[level - 1] if level - 1 < len(ginis) else None
    neighbours = [ginis[i] for i in (level - 2, level) if 0 <= i < len(ginis) and ginis[i] is not None]
    if middle is None or not neighbours:
        return None
    return float(middle - max(neighbours))


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b over the same users and its standard error (paired: the same targets)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"diff": float(d.mean()) if n else float("nan"), "se": se, "n": n}


def group_difference(values: np.ndarray, in_group: np.ndarray) -> dict[str, float]:
    """Mean inside the group minus mean outside it, with the two-sample standard error."""
    values = np.asarray(values, dtype=np.float64)
    a, b = values[in_group], values[~in_group]
    if len(a) < 2 or len(b) < 2:
        return {"head": float("nan"), "tail": float("nan"), "diff": float("nan"), "se": float("nan"),
                "ratio": float("nan"), "n_head": len(a), "n_tail": len(b)}
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {"head": float(a.mean()), "tail": float(b.mean()), "diff": float(a.mean() - b.mean()), "se": se,
            "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else float("inf"), "n_head": len(a), "n_tail": len(b)}


def generator_comparisons(runs: Sequence[GeneratorRun], metric: str = "recall@10") -> dict[str, Any]:
    """Per seed: head - tail of every variant, and every variant - baseline and - drop (paired)."""
    by_seed: dict[int, dict[str, GeneratorRun]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, {})[run.variant] = run
    head_tail, versus = [], []
    for seed, variants in sorted(by_seed.items()):
        drop = next((name for name in variants if name.startswith("drop layer")), None)
        for name, run in variants.items():
            head_tail.append({"seed": seed, "variant": name, "metric": metric} | group_difference(run.hits[metric], run.is_head))
            refs = () if name == "baseline" else ("baseline", drop)
            for ref in refs:
                if ref and ref != name and ref in variants:
                    versus.append({"seed": seed, "variant": name, "versus": ref, "metric": metric}
                                  | paired_difference(run.hits[metric], variants[ref].hits[metric]))
    return {"metric": metric, "head_tail": head_tail, "versus": versus}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std()) if len(arr) > 1 else 0.0
