"""The index stages: today's codes against the published index (drift), SIDs -> report -> GX gate ->
adaptive pruning and the gate again, and the atomic publication of an index version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid.checkpoints import reach
from rqsid.config import DriftConfig, GateConfig, PruneConfig
from rqsid.drift import DriftReport, apply_removed_tokens, drift_report
from rqsid.home import ProjectHome
from rqsid.index import IndexSnapshot, ItemDelta, carry_codes, changed_sid_count, item_delta, stable_table, write_index_files
from rqsid.metrics import balance_summary, distribution_report, table_report
from rqsid.prune import PruneResult
from rqsid.sids import SidTable, assign_sids
from rqsid.trie import SidTrie
from rqsid.versioning import version_id
from tasks.catalog import CatalogVersion
from tasks.common import GateFailed, Stopwatch, gate_dict, registry
from tasks.embeddings import EmbeddingsVersion
from tasks.tokenizer import TokenizerVersion

# ---------------------------------------------------------------- drift against the published index


@dataclass
class DriftMeasure:
    report: DriftReport
    delta: ItemDelta
    codes: np.ndarray  # today's raw codes: carried for unchanged items, encoded for the rest
    compute_s: float


@task(name="measure-drift", cache_policy=NO_CACHE)
def measure_drift(catalog: CatalogVersion, embeddings: EmbeddingsVersion, index_dir: Path,
                  config: DriftConfig, level: int = 2) -> DriftMeasure:
    """Compare today's catalog with the published index under the index's own tokenizer."""
    from rqsid.quantize import load_tokenizer

    watch = Stopwatch()
    with watch.compute():
        index = IndexSnapshot.load(index_dir)
        ids, hashes = catalog.items()
        X = embeddings.aligned(ids)
        delta = item_delta(index.item_ids, index.hashes, ids, hashes)
        fresh = ~delta.unchanged
        tok = load_tokenizer(index_dir / "tokenizer")
        new_codes = tok.encode(X[fresh]) if fresh.any() else np.zeros((0, index.codes.shape[1]), dtype=np.int64)
        codes = carry_codes(index.codes, delta, new_codes)
        removed, sizes = index.removed, index.manifest["level_sizes"]
        merged = distribution_report(apply_removed_tokens(codes, level, removed.get(level)), sizes, removed)
        new_only = None
        if fresh.any():
            new_only = distribution_report(apply_removed_tokens(new_codes, level, removed.get(level)), sizes, removed)
        report = drift_report(
            delta.as_dict(),
            recon_error_new=tok.reconstruction_error(X[fresh]) if fresh.any() else None,
            recon_error_index=index.manifest["recon_error"],
            layer2_gini_index=index.manifest.get("layer2_gini"),
            layer2_gini_merged=merged["layers"][level - 1]["gini"],
            layer2_gini_new_only=new_only["layers"][level - 1]["gini"] if new_only else None,
            config=config,
        )
    return DriftMeasure(report, delta, codes, watch.compute_s)


# ---------------------------------------------------------------- SIDs, the gate, pruning


@dataclass
class SidBuild:
    table: SidTable  # final SIDs (pruned when the gate needed it)
    codes: np.ndarray  # raw codes, catalog order
    report: dict  # of the final SIDs
    unpruned_report: dict  # of the raw codes, before any pruning
    gates: list[dict]  # each distribution gate run, in order, with the figures it judged ("observed")
    k: int
    dropped: bool
    prune_trace: list[dict]
    sid_changes: dict | None
    compute_s: float


@dataclass
class _Assigned:
    codes: np.ndarray
    unpruned: SidTable
    table: SidTable  # = unpruned, or with the published pruning and dedup numbers carried over
    base: IndexSnapshot | None
    compute_s: float


@task(name="assign-sids", cache_policy=NO_CACHE)
def assign_index_sids(catalog: CatalogVersion, embeddings: EmbeddingsVersion, tokenizer: TokenizerVersion,
                      prune: PruneConfig, base: Path | None = None, carried_codes: np.ndarray | None = None) -> _Assigned:
    """Codes (carried, or encoded by the tokenizer) -> SIDs; on top of `base`, its pruning and dedup numbers."""
    from rqsid.quantize import load_tokenizer

    watch = Stopwatch()
    with watch.compute():
        ids, _ = catalog.items()
        base_index = IndexSnapshot.load(base) if base is not None else None
        if carried_codes is not None:
            codes = carried_codes
        else:
            codes = load_tokenizer(tokenizer.model_dir).encode(embeddings.aligned(ids))
        unpruned = assign_sids(ids, codes, tokenizer.level_sizes)
        table = stable_table(ids, codes, tokenizer.level_sizes, base_index, prune.level) if base_index else unpruned
    return _Assigned(codes, unpruned, table, base_index, watch.compute_s)


@task(name="distribution-gate", cache_policy=NO_CACHE)
def distribution_gate(report: dict, gate: GateConfig, when: str, k: int, dropped: bool = False) -> dict:
    """The GX distribution gate on a report; logs what it judged and its verdict."""
    from prefect import get_run_logger

    from tasks.gates import check_distribution, distribution_gate_inputs

    result = check_distribution(report, gate)
    observed = distribution_gate_inputs(report)
    figures = f"layer-2 Gini {observed.get('layer2_gini', float('nan')):.4f} (max {gate.max_layer2_gini}), " \
              f"collisions {observed['collision_rate']:.4f} (max {gate.max_collision_rate}), K={k}"
    if result.success:
        get_run_logger().info("distribution gate %s: passed; %s", when, figures)
    else:
        get_run_logger().warning("distribution gate %s: FAILED (%s); %s", when, "; ".join(result.failures), figures)
    return gate_dict(result) | {"when": when, "observed": observed, "k": k, "dropped": dropped}


@task(name="prune-adaptively", cache_policy=NO_CACHE)
def prune_adaptively(unpruned: SidTable, prune: PruneConfig) -> tuple[PruneResult, float]:
    """Adaptive top-K pruning of the raw SIDs (`rqsid.prune.choose_k`); logs the K chosen and why."""
    from prefect import get_run_logger

    from rqsid.prune import choose_k

    watch = Stopwatch()
    with watch.compute():
        # (prune.fallback is not passed: the pipeline always falls back to dropping the layer)
        pruned = choose_k(unpruned, prune.gini_threshold, prune.max_collision_rate, prune.level, prune.max_k)
    layer = pruned.report["layers"][prune.level - 1]
    if pruned.dropped:
        get_run_logger().warning("pruning layer %d: no K keeps Gini <= %s and collisions <= %s: the layer is dropped",
                                 prune.level, prune.gini_threshold, prune.max_collision_rate)
    else:
        get_run_logger().info("pruning layer %d: K=%d, the smallest K with retained Gini %.4f <= %s and collisions "
                              "%.4f <= %s", prune.level, pruned.k, layer["gini"], prune.gini_threshold,
                              pruned.report["collision_rate"], prune.max_collision_rate)
    return pruned, watch.compute_s


def build_sids(catalog: CatalogVersion, embeddings: EmbeddingsVersion, tokenizer: TokenizerVersion,
               prune: PruneConfig, gate: GateConfig, base: Path | None = None,
               carried_codes: np.ndarray | None = None) -> SidBuild:
    """SIDs -> report -> GX gate; when it fails, adaptive top-K pruning and the gate again (each a task, so the
    flow run's graph shows them).

    With `base` (the published index, when its tokenizer is reused), unchanged items keep their codes
    and the published pruning and dedup numbers, so their SIDs stay as they were unless the gate
    forces a new choice of K. Raises GateFailed when no pruning passes: nothing gets published."""
    assigned = assign_index_sids(catalog, embeddings, tokenizer, prune, base, carried_codes)
    watch = Stopwatch(assigned.compute_s)
    with watch.compute():
        table, unpruned_report = assigned.table, table_report(assigned.unpruned)
        report = unpruned_report if table is assigned.unpruned else table_report(table)
    k, dropped, trace = (table.pruning or {}).get("k", 0), False, []
    gates = [distribution_gate(report, gate, "before pruning" if not k else "with the published pruning", k)]
    if not gates[-1]["success"]:
        pruned, seconds = prune_adaptively(assigned.unpruned, prune)
        watch.compute_s += seconds
        table, report, k, dropped, trace = pruned.table, pruned.report, pruned.k, pruned.dropped, pruned.trace
        gates.append(distribution_gate(report, gate, "after pruning", k, dropped))
    if not gates[-1]["success"]:
        err = GateFailed(
            f"distribution gate still fails after pruning (K={k}{', layer dropped' if dropped else ''}): "
            f"{'; '.join(gates[-1]['failures'])}; nothing was published"
        )
        err.details = gates
        raise err
    with watch.compute():
        SidTrie.build(table.token_matrix(), table.vocab_size)  # every SID maps back to exactly one item
        changes = None
        if assigned.base is not None:
            base_sids = assigned.base.sids
            changes = changed_sid_count(base_sids.item_ids, base_sids.token_matrix(), table.item_ids, table.token_matrix())
    return SidBuild(table, assigned.codes, report, unpruned_report, gates, int(k), bool(dropped), trace, changes,
                    watch.compute_s)


# ---------------------------------------------------------------- publication


def index_inputs_key(catalog: CatalogVersion, embeddings: EmbeddingsVersion, tokenizer: TokenizerVersion,
                     prune: PruneConfig, gate: GateConfig) -> str:
    """What an index is made from; a published index with the same key needs no rebuild."""
    return version_id(
        "inputs",
        {"items": catalog.items_version, "embeddings": embeddings.version, "tokenizer": tokenizer.version},
        {"prune": prune.identity(), "gate": gate.identity()},
    )


def index_version(inputs_key: str, base: str | None) -> str:
    """The index built from these inputs on top of `base` (the index whose SIDs it keeps stable)."""
    return version_id("index", {"inputs": inputs_key, "base": base})


@dataclass
class IndexVersion:
    version: str
    path: Path
    manifest: dict
    reused: bool
    compute_s: float


@task(name="publish-index", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def publish_index(version: str, catalog: CatalogVersion, embeddings: EmbeddingsVersion, tokenizer: TokenizerVersion,
                  sids: SidBuild, extra: dict[str, Any], home: ProjectHome | None = None) -> IndexVersion:
    """Write the index version in a temporary folder, rename it into place, then move `current` to it."""
    watch = Stopwatch()
    ids, hashes = catalog.items()

    def build(folder: Path) -> dict:
        with watch.compute():
            write_index_files(folder, sids.table, ids, hashes, sids.codes, sids.report, sids.gates, sids.prune_trace,
                              tokenizer.model_dir)
        reach("publish")
        level2 = next((layer for layer in sids.report["layers"] if layer["level"] == 2), None)
        return {
            "catalog_name": catalog.name,
            "versions": {"catalog": catalog.version, "embeddings": embeddings.version, "tokenizer": tokenizer.version},
            "n_items": len(ids),
            "level_sizes": tokenizer.level_sizes,
            "recon_error": tokenizer.recon_error,
            "layer2_gini": level2["gini"] if level2 else None,
            "unpruned": balance_summary(sids.unpruned_report),
            "collision_rate": sids.report["collision_rate"],
            "k": sids.k,
            "dropped": sids.dropped,
            "pruning": sids.table.pruning,
            "sid_changes": sids.sid_changes,
            **extra,
        }

    art = registry(catalog.name, home).publish(version, build)
    return IndexVersion(version, art.path, art.manifest, art.reused, watch.compute_s)


def reuse_published(catalog_name: str, version: str, home: ProjectHome | None = None) -> IndexVersion | None:
    """The index version when it was already published (a rerun): point `current` at it again."""
    reg = registry(catalog_name, home)
    if not reg.store.exists("versions", version):
        return None
    reg.set_current(version)
    art = reg.store.get("versions", version)
    return IndexVersion(version, art.path, art.manifest, True, 0.0)
