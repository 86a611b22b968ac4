"""The generator experiments (findings 3 and 4): the SID variants it learns (baseline, a layer dropped,
top-K removals, the automatically chosen K), one training + test evaluation per variant with per-user
hits kept for paired statistics, and the popularity control of the head/tail split.

A generator run is a unit of work with an id (`run_version`: its SIDs, the unpruned SIDs of the head/tail
split, the interactions and the generator config); `save_run` / `load_run` keep it in a folder, so that
an interrupted study resumes without training the same generator again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rqsid import RqsidError
from rqsid.config import GeneratorConfig, PruneConfig
from rqsid.jsonio import read_json, write_json
from rqsid.metrics import report_to_json, table_report
from rqsid.sids import SidTable
from rqsid.study.statistics import group_difference
from rqsid.study.sweeps import layer_values
from rqsid.versioning import digest, version_id


def prune_variants(unpruned: SidTable, ks: Sequence[int], prune: PruneConfig) -> dict[str, SidTable]:
    """The SID tables the generator is trained on: baseline, layer `prune.level` dropped, top-K for each
    K in `ks`, and the automatically chosen K (rqsid.prune.choose_k with the config's bounds)."""
    from rqsid.prune import choose_k, drop_layer, prune_top_k

    level = prune.level
    variants = {"baseline": unpruned, f"drop layer {level}": drop_layer(unpruned, level)}
    size = unpruned.level_sizes[level - 1]
    for k in sorted(set(int(k) for k in ks)):
        if not 0 < k < size:
            raise RqsidError(f"top-K value {k} must be between 1 and {size - 1} (the level size minus one)")
        variants[f"top-{k}"] = prune_top_k(unpruned, k, level)
    auto = choose_k(unpruned, prune.gini_threshold, prune.max_collision_rate, level, prune.max_k, prune.fallback)
    variants[f"auto top-K (K={auto.k}{', dropped' if auto.dropped else ''})"] = auto.table
    return variants


def variant_key(table: SidTable) -> str:
    """Tables with equal keys hold the same SIDs (auto K may equal a listed K, 0 or the dropped layer)."""
    return json.dumps(table.pruning or {"method": "none"}, sort_keys=True)


def table_summary(table: SidTable, level: int = 2) -> dict[str, Any]:
    report = table_report(table)
    layer = report["layers"][level - 1]
    pruning = table.pruning or {}
    return {"k": int(pruning.get("k", 0)), "method": pruning.get("method", "none"),
            "collision_rate": float(report["collision_rate"]), "mean_sid_length": report["sid_length"]["mean"],
            "dedup_size": int(report["dedup_size"]), f"layer{level}_gini": layer["gini"],
            "layer_gini": layer_values(report_to_json(report), "gini")}


@dataclass
class GeneratorRun:
    variant: str
    seed: int
    metrics: dict[str, dict[str, float]]  # {"all"|"head"|"tail": {recall@5, ndcg@5, recall@10, ndcg@10, n}}
    hits: dict[str, np.ndarray]  # per test user: recall@10 and ndcg@10
    is_head: np.ndarray  # per test user: the target's unpruned layer-2 token is a head token
    stats: dict[str, Any] = field(default_factory=dict)


def run_generator(variant: str, table: SidTable, unpruned: SidTable, interactions, config: GeneratorConfig,
                  progress: bool = False, log: Callable[[str], None] = print) -> GeneratorRun:
    """Train the generator on `table`, evaluate it on the leave-one-out test split, keep per-user hits."""
    from rqsid.generator.data import SidVocab, eval_batch, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask, ranking_metrics
    from rqsid.generator.train import evaluate_split, train_generator

    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(interactions, vocab)
    trained = train_generator(seqs, vocab, config, progress=progress, log=log)
    head_items = head_item_mask(unpruned, vocab)
    started = time.perf_counter()
    metrics, ranked = evaluate_split(trained, seqs, "test", head_items, progress=progress)
    targets = eval_batch(seqs, np.arange(seqs.n_users), "test", config.max_history).targets
    per_user = ranking_metrics(ranked, targets)
    stats = {"train_seconds": trained.stats["train_seconds"], "wall_seconds": trained.stats["wall_seconds"],
             "epochs": trained.stats["epochs"], "best_epoch": trained.best.get("epoch"),
             "test_seconds": round(time.perf_counter() - started, 1), "n_users": int(seqs.n_users)}
    return GeneratorRun(variant, config.seed, metrics, {"recall@10": per_user["recall@10"], "ndcg@10": per_user["ndcg@10"]},
                        head_items[targets], stats)


def popularity_head_tail(unpruned: SidTable, interactions, metric: str = "recall@10") -> dict[str, float]:
    """Control for finding 3: the same head/tail split for a popularity ranker (the items most often seen
    before the test position), and how popular head and tail targets are in those histories. A gap that
    popularity shows as well comes from which items users buy, not from how the generator reads SIDs."""
    from rqsid.generator.data import SidVocab, eval_batch, item_counts_before, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask, popularity_ranking, ranking_metrics

    vocab = SidVocab.from_sid_table(unpruned)
    seqs = sequences_from_interactions(interactions, vocab)
    targets = eval_batch(seqs, np.arange(seqs.n_users), "test", 1).targets
    counts = item_counts_before(seqs, vocab.n_items, "test")
    per_user = ranking_metrics(popularity_ranking(counts, seqs.n_users), targets)
    is_head = head_item_mask(unpruned, vocab)[targets]
    seen = counts[targets].astype(np.float64)
    return group_difference(per_user[metric], is_head) | {
        "metric": metric, "overall": float(per_user[metric].mean()),
        "head_target_count_mean": float(seen[is_head].mean()) if is_head.any() else float("nan"),
        "tail_target_count_mean": float(seen[~is_head].mean()) if (~is_head).any() else float("nan")}


# ---------------------------------------------------------------- generator runs as stored units of work


def table_digest(table: pa.Table | SidTable) -> str:
    """A content hash of a SID table (ids, codes, dedup, level sizes, pruning) or of an Arrow table."""
    if isinstance(table, SidTable):
        return digest("\x1f".join(map(str, table.item_ids)), np.ascontiguousarray(table.codes, dtype=np.int64).tobytes(),
                      np.ascontiguousarray(table.dedup, dtype=np.int64).tobytes(),
                      json.dumps([list(table.level_sizes), table.pruning], sort_keys=True))
    return digest(*("\x1f".join(map(str, table.column(name).to_pylist())) for name in table.column_names),
                  json.dumps(table.column_names))


def run_version(table: SidTable, unpruned: SidTable, interactions_digest: str, config: GeneratorConfig) -> str:
    return version_id("study-generator", {"sids": table_digest(table), "unpruned": table_digest(unpruned),
                                          "interactions": interactions_digest}, config.identity())


def save_run(folder: Path, run: GeneratorRun) -> dict[str, Any]:
    """Write the run's per-user arrays into `folder`; returns the manifest fields (metrics and stats)."""
    np.savez(folder / "hits.npz", is_head=run.is_head, **{name: values for name, values in run.hits.items()})
    write_json(folder / "run.json", {"variant": run.variant, "seed": run.seed, "metrics": run.metrics, "stats": run.stats})
    return {"variant": run.variant, "seed": run.seed}


def load_run(folder: Path, variant: str) -> GeneratorRun:
    """The stored run under the name of the variant asking for it (equal SIDs, different names)."""
    saved = read_json(folder / "run.json")
    with np.load(folder / "hits.npz") as arrays:
        hits = {name: arrays[name] for name in arrays.files if name != "is_head"}
        is_head = arrays["is_head"]
    return GeneratorRun(variant, int(saved["seed"]), saved["metrics"], hits, is_head, saved["stats"])
