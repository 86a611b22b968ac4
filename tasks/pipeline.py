"""Prefect tasks over the rqsid library: thin wrappers whose outputs are versioned files.

Every artifact lives in the project home's version store (`rqsid.versioning.VersionStore`) under a
version id hashed from its inputs' version ids and its config. A task first computes that id; when
the version is already on disk it returns it (`reused=True`) without recomputing. That, not Prefect's
result cache, is what lets a rerun after a crash resume where it stopped, in any process. Prefect
task caching is therefore off (NO_CACHE): hashing arrays for cache keys would only cost time.

Each task measures the seconds spent inside library calls (`compute_s`) so that flows can report
how much of their wall time went to orchestration instead.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid import RqsidError
from rqsid.catalog import read_catalog, read_interactions, validate_catalog, validate_interactions, write_catalog
from rqsid.catalog import write_interactions, write_quarantine
from rqsid.config import DriftConfig, EmbedConfig, GateConfig, OrchestrationConfig, PruneConfig, QuantizerConfig
from rqsid.drift import DriftReport, apply_removed_tokens, drift_report
from rqsid.embed import read_embeddings, write_embeddings
from rqsid.home import ProjectHome
from rqsid.metrics import distribution_report, table_report
from rqsid.sids import SidTable, assign_sids, read_sids, write_sids
from rqsid.trie import SidTrie
from rqsid.versioning import (
    IndexRegistry,
    VersionStore,
    carry_codes,
    catalog_version,
    changed_sid_count,
    item_content_hashes,
    item_delta,
    positions,
    stable_dedup,
    version_id,
)

DEMO_SOURCE = "demo"
DEMO_ITEMS = 3000


class GateFailed(RqsidError):
    """A quality gate failed; the flow stops and publishes nothing."""


# ---------------------------------------------------------------- timing


@dataclass
class Stopwatch:
    """Seconds spent inside library compute, accumulated over `with watch.compute():` blocks."""

    compute_s: float = 0.0

    @contextmanager
    def compute(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.compute_s += time.perf_counter() - start


RUNTIME_FIELDS = {"threads"}  # how fast a model is made, not what it is: left out of version ids


def identity(config) -> dict:
    """The part of a config section that defines an artifact."""
    return config.model_dump(mode="json", exclude=RUNTIME_FIELDS & set(type(config).model_fields))


def store(home: ProjectHome | None = None) -> VersionStore:
    return VersionStore((home or ProjectHome.default()).data)


def registry(catalog_name: str, home: ProjectHome | None = None) -> IndexRegistry:
    return IndexRegistry((home or ProjectHome.default()).indexes / catalog_name)


def _write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return path


# ---------------------------------------------------------------- catalog


@dataclass
class CatalogVersion:
    version: str  # items and interactions
    items_version: str  # items only: what embeddings and SIDs depend on
    path: Path  # the version folder: catalog.parquet, items.parquet, quarantine.parquet, interactions.parquet
    name: str
    n_items: int
    n_quarantined: int
    quarantine_reasons: dict[str, int]
    n_interactions: int | None
    gates: dict[str, dict]  # GX results of the raw and the clean catalog
    reused: bool
    compute_s: float

    @property
    def catalog_file(self) -> Path:
        return self.path / "catalog.parquet"

    @property
    def interactions_file(self) -> Path | None:
        path = self.path / "interactions.parquet"
        return path if path.exists() else None

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, content hashes) in catalog order."""
        table = pq.read_table(self.path / "items.parquet")
        return table.column("item_id").to_numpy(zero_copy_only=False).astype(object), table.column(
            "content_hash"
        ).to_numpy(zero_copy_only=False).astype(object)


def catalog_name_of(source: str | None) -> str:
    if source in (None, "", DEMO_SOURCE):
        return DEMO_SOURCE
    path = Path(source)
    return path.stem if path.is_file() else path.resolve().name


def _import_source(source: str | None, demo_items: int) -> tuple[pa.Table, pa.Table | None]:
    if source in (None, "", DEMO_SOURCE):
        from rqsid.synthetic import make_demo_catalog

        return make_demo_catalog(n_items=demo_items, seed=0)
    path = Path(source)
    if path.suffix == ".parquet" and path.is_file():
        return read_catalog(path), None
    from rqsid.importers import import_dataset

    return import_dataset(path)


def _reason_counts(quarantine: pa.Table) -> dict[str, int]:
    if quarantine.num_rows == 0:
        return {}
    reasons, counts = np.unique(quarantine.column("reason").to_numpy(zero_copy_only=False).astype(str), return_counts=True)
    return {str(r): int(c) for r, c in zip(reasons, counts)}


@task(name="load-catalog", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_catalog(source: str | None, interactions: str | None = None, demo_items: int = DEMO_ITEMS,
                 home: ProjectHome | None = None) -> CatalogVersion:
    """Import the catalog, run the GX catalog suite, quarantine bad rows, store the clean version."""
    from tasks.gates import check_catalog

    watch = Stopwatch()
    with watch.compute():
        raw, raw_inter = _import_source(source, demo_items)
        if interactions:
            from rqsid.importers import import_interactions_table

            raw_inter = read_interactions(interactions) if interactions.endswith(".parquet") else import_interactions_table(interactions)
        clean, quarantine = validate_catalog(raw)
        hashes = item_content_hashes(clean)
        ids = clean.column("item_id").to_numpy(zero_copy_only=False).astype(object)
        inter_clean, inter_quarantine = (None, None)
        if raw_inter is not None:
            inter_clean, inter_quarantine = validate_interactions(raw_inter, ids)
    raw_gate = check_catalog(_gate_frame(raw))
    clean_gate = check_catalog(_gate_frame(clean))
    if not clean_gate.success:
        raise GateFailed(f"catalog gate failed after quarantine: {'; '.join(clean_gate.failures)}")
    inter_version = None
    if inter_clean is not None:
        inter_version = catalog_version(*_interaction_keys(inter_clean))
    items_version = catalog_version(ids, hashes)
    version = version_id("catalog", {"items": items_version, "interactions": inter_version})

    def build(folder: Path) -> dict:
        with watch.compute():
            write_catalog(clean, folder / "catalog.parquet")
            pq.write_table(pa.table({"item_id": ids.astype(str), "content_hash": hashes.astype(str)}), folder / "items.parquet")
            write_quarantine(quarantine, folder / "quarantine.parquet")
            if inter_clean is not None:
                write_interactions(inter_clean, folder / "interactions.parquet")
                write_quarantine(inter_quarantine, folder / "interactions_quarantine.parquet")
        return {"source": str(source), "n_items": clean.num_rows, "n_quarantined": quarantine.num_rows}

    artifact = store(home).get_or_create("catalog", version, build)
    return CatalogVersion(
        version=version,
        items_version=items_version,
        path=artifact.path,
        name=catalog_name_of(source),
        n_items=clean.num_rows,
        n_quarantined=quarantine.num_rows,
        quarantine_reasons=_reason_counts(quarantine),
        n_interactions=None if inter_clean is None else inter_clean.num_rows,
        gates={"catalog_raw": _gate_dict(raw_gate), "catalog_clean": _gate_dict(clean_gate)},
        reused=artifact.reused,
        compute_s=watch.compute_s,
    )


def _gate_frame(table: pa.Table):
    """What the GX catalog suite sees: ids, and as "description" the whole text that gets embedded
    (title, brand, categories, description, extra), so an item with only a brand and a category path
    (7 Beauty items have no title) counts as having text, as it does for the library."""
    import pandas as pd

    from rqsid.catalog import item_text

    ids = table.column("item_id").to_pylist()
    return pd.DataFrame({"item_id": ids, "title": table.column("title").to_pylist(), "description": item_text(table)})


def _interaction_keys(inter: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """A cheap identity for interactions: (user, seq) keys with the item as 'content'."""
    users = inter.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    seqs = inter.column("seq").to_numpy().astype(str)
    return np.char.add(np.char.add(users, "\x1f"), seqs), inter.column("item_id").to_numpy(zero_copy_only=False)


def _gate_dict(gate) -> dict:
    return {"name": gate.name, "success": gate.success, "failures": gate.failures, "statistics": gate.statistics}


# ---------------------------------------------------------------- embeddings


@dataclass
class EmbeddingsVersion:
    version: str
    path: Path
    n_items: int
    n_embedded: int  # items embedded by this run (the rest were carried over from an earlier version)
    dim: int
    reused: bool
    compute_s: float
    stats: dict = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return self.path / "embeddings.parquet"


def _aligned(ids: np.ndarray, emb_ids: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Rows of X reordered to `ids` (every id must be present)."""
    index = {item: row for row, item in enumerate(emb_ids)}
    missing = [i for i in ids if i not in index]
    if missing:
        raise RqsidError(f"{len(missing)} items have no embedding, e.g. {missing[:5]}")
    return X[np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))]


def _previous_embeddings(previous: Path | None, config: EmbedConfig, home: ProjectHome | None):
    """(ids, hashes, X) of the embeddings behind a published index, when made with the same embed config."""
    if previous is None:
        return None
    manifest = json.loads((previous / "manifest.json").read_text())
    emb_version = manifest["versions"]["embeddings"]
    s = store(home)
    if not s.exists("embeddings", emb_version):
        return None
    emb = s.get("embeddings", emb_version)
    if emb.manifest.get("embed_config") != config.model_dump(mode="json"):
        return None
    cat = s.get("catalog", emb.manifest["catalog"]).path
    items = pq.read_table(cat / "items.parquet")
    ids, hashes = (items.column(c).to_numpy(zero_copy_only=False).astype(object) for c in ("item_id", "content_hash"))
    emb_ids, X = read_embeddings(emb.path / "embeddings.parquet")
    return ids, hashes, _aligned(ids, emb_ids, X)


@task(name="embed", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def embed_items(catalog: CatalogVersion, config: EmbedConfig, orchestration: OrchestrationConfig,
                previous_index: Path | None = None, home: ProjectHome | None = None) -> EmbeddingsVersion:
    """Embeddings of the catalog on Dask; items whose text is unchanged since the previous index keep
    their vectors, so a nightly run embeds only new and changed items."""
    version = version_id("embeddings", {"items": catalog.items_version}, config)
    s = store(home)
    if s.exists("embeddings", version):
        art = s.get("embeddings", version)
        return EmbeddingsVersion(version, art.path, art.manifest["n_items"], 0, art.manifest["dim"], True, 0.0, {})
    watch = Stopwatch()
    stats: dict = {}

    def build(folder: Path) -> dict:
        ids, hashes = catalog.items()
        X, todo = None, np.ones(len(ids), dtype=bool)
        prev = _previous_embeddings(previous_index, config, home)
        if prev is not None:
            delta = item_delta(prev[0], prev[1], ids, hashes)
            todo = ~delta.unchanged
            X = np.zeros((len(ids), prev[2].shape[1]), dtype=np.float32)
            X[delta.unchanged] = prev[2][delta.prev_row[delta.unchanged]]
        if todo.any():
            new_ids, new_X = _embed_on_dask(catalog, np.flatnonzero(todo), folder, config, orchestration, watch, stats)
            new_X = _aligned(ids[todo], new_ids, new_X)
            X = new_X if X is None else X
            X[todo] = new_X
        with watch.compute():
            write_embeddings(folder / "embeddings.parquet", ids, X)
        return {"catalog": catalog.version, "embed_config": config.model_dump(mode="json"), "n_items": len(ids),
                "n_embedded": int(todo.sum()), "dim": int(X.shape[1]), "stats": stats}

    art = s.get_or_create("embeddings", version, build)
    m = art.manifest
    return EmbeddingsVersion(version, art.path, m["n_items"], m["n_embedded"], m["dim"], art.reused, watch.compute_s, stats)


def _embed_on_dask(catalog: CatalogVersion, rows: np.ndarray, folder: Path, config: EmbedConfig,
                   orchestration: OrchestrationConfig, watch: Stopwatch, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Embed the given catalog rows on a Dask cluster (the configured one, else a LocalCluster)."""
    from tasks.dask_embed import dask_client, embed_catalog_dask

    subset = folder / "_to_embed.parquet"
    pq.write_table(pq.read_table(catalog.catalog_file).take(pa.array(rows)), subset)
    out = folder / "_embedded.parquet"
    with dask_client(orchestration.dask_address, orchestration.dask_workers) as client:
        stats.update(embed_catalog_dask(subset, out, config, client, orchestration.partition_rows) or {})
    # library compute: the adapter's seconds from reading partitions to writing vectors (cluster start-up
    # and shutdown excluded); an upper bound, since it includes Dask's scheduling of the partitions
    watch.compute_s += float(stats.get("seconds", 0.0))
    ids, X = read_embeddings(out)
    subset.unlink()
    out.unlink()
    return ids, X


@task(name="check-embeddings", cache_policy=NO_CACHE)
def gate_embeddings(embeddings: EmbeddingsVersion, config: EmbedConfig) -> dict:
    """GX embedding suite; raises GateFailed so that nothing downstream runs on bad vectors."""
    from tasks.gates import check_embeddings

    ids, X = read_embeddings(embeddings.file)
    bounds = (0.99, 1.01) if config.normalize else (1e-3, 1e3)
    result = check_embeddings(ids, X, expected_dim=embeddings.dim, min_norm=bounds[0], max_norm=bounds[1])
    if not result.success:
        raise GateFailed(f"embeddings gate failed: {'; '.join(result.failures)}")
    return _gate_dict(result) | {"results": result.results}


# ---------------------------------------------------------------- tokenizer


@dataclass
class TokenizerVersion:
    version: str
    path: Path  # folder with model/ (load_tokenizer) and manifest.json
    level_sizes: list[int]
    recon_error: float
    fitted: bool  # False when the published tokenizer was reused
    reused: bool
    compute_s: float
    model_dir: Path  # what load_tokenizer reads


def tokenizer_version(embeddings: EmbeddingsVersion, config: QuantizerConfig) -> str:
    return version_id("tokenizer", {"embeddings": embeddings.version}, identity(config))


@task(name="fit-tokenizer", cache_policy=NO_CACHE)
def fit_tokenizer(embeddings: EmbeddingsVersion, config: QuantizerConfig, home: ProjectHome | None = None) -> TokenizerVersion:
    """Fit the RQ-VAE (or residual k-means) on the embeddings, or return the stored fit."""
    from rqsid.quantize import make_tokenizer

    version = tokenizer_version(embeddings, config)
    watch = Stopwatch()

    def build(folder: Path) -> dict:
        with watch.compute():
            _, X = read_embeddings(embeddings.file)
            tok = make_tokenizer(config).fit(X)
            tok.save(folder / "model")
            error = tok.reconstruction_error(X)
        return {"embeddings": embeddings.version, "level_sizes": list(tok.codebook_sizes), "recon_error": error,
                "epochs_run": len(tok.history), "code_space": tok.code_space}

    art = store(home).get_or_create("tokenizer", version, build)
    m = art.manifest
    return TokenizerVersion(version, art.path, m["level_sizes"], m["recon_error"], True, art.reused, watch.compute_s,
                            art.path / "model")


def published_tokenizer(index_dir: Path) -> TokenizerVersion:
    """The tokenizer an index was built with (a copy is kept inside the index version)."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    return TokenizerVersion(manifest["versions"]["tokenizer"], index_dir, manifest["level_sizes"],
                            manifest["recon_error"], False, True, 0.0, index_dir / "tokenizer")


# ---------------------------------------------------------------- drift against the published index


@dataclass
class IndexSnapshot:
    """What a published index knows about its items: raw codes, content hashes, SIDs, pruning."""

    path: Path
    manifest: dict
    item_ids: np.ndarray
    hashes: np.ndarray
    codes: np.ndarray  # raw (unpruned) codes
    sids: SidTable

    @classmethod
    def load(cls, path: Path) -> "IndexSnapshot":
        manifest = json.loads((path / "manifest.json").read_text())
        table = pq.read_table(path / "codes.parquet")
        levels = len(manifest["level_sizes"])
        codes = np.stack([table.column(f"c{l + 1}").to_numpy() for l in range(levels)], axis=1).astype(np.int64)
        return cls(path, manifest, table.column("item_id").to_numpy(zero_copy_only=False).astype(object),
                   table.column("content_hash").to_numpy(zero_copy_only=False).astype(object), codes,
                   read_sids(path / "sids.parquet"))

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def removed(self) -> dict[int, list[int]]:
        return self.sids.removed_codes()


@dataclass
class DriftMeasure:
    report: DriftReport
    delta: Any  # rqsid.versioning.ItemDelta
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
        emb_ids, X = read_embeddings(embeddings.file)
        X = _aligned(ids, emb_ids, X)
        delta = item_delta(index.item_ids, index.hashes, ids, hashes)
        fresh = ~delta.unchanged
        tok = load_tokenizer(index_dir / "tokenizer")
        new_codes = tok.encode(X[fresh]) if fresh.any() else np.zeros((0, index.codes.shape[1]), dtype=np.int64)
        codes = carry_codes(index.codes, delta, new_codes)
        removed = index.removed
        sizes = index.manifest["level_sizes"]
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
    report: dict
    gates: list[dict]  # each distribution gate run, in order
    k: int
    dropped: bool
    prune_trace: list[dict]
    sid_changes: dict | None
    compute_s: float


def _stable_table(ids: np.ndarray, codes: np.ndarray, sizes: list[int], base: IndexSnapshot, level: int) -> SidTable:
    """Today's SIDs under the published pruning: pruned tokens and dedup numbers carried over."""
    kept = apply_removed_tokens(codes, level, base.removed.get(level, []))
    prev_row = positions(ids, base.sids.item_ids)
    present = prev_row >= 0
    same_path = present.copy()
    same_path[present] = (base.sids.codes[prev_row[present]] == kept[present]).all(axis=1)
    prior = np.full(len(ids), -1, dtype=np.int64)
    prior[same_path] = base.sids.dedup[prev_row[same_path]]
    return SidTable(ids, kept, stable_dedup(kept, prior), tuple(sizes), base.sids.pruning)


@task(name="assign-sids", cache_policy=NO_CACHE)
def build_sids(catalog: CatalogVersion, embeddings: EmbeddingsVersion, tokenizer: TokenizerVersion,
               prune: PruneConfig, gate: GateConfig, base: Path | None = None,
               carried_codes: np.ndarray | None = None) -> SidBuild:
    """SIDs -> report -> GX gate; when it fails, adaptive top-K pruning (choose_k) and the gate again.

    With `base` (the published index, when its tokenizer is reused), unchanged items keep their codes
    and the published pruning and dedup numbers, so their SIDs stay as they were unless the gate
    forces a new choice of K. Raises GateFailed when no pruning passes: nothing gets published."""
    from rqsid.prune import choose_k
    from rqsid.quantize import load_tokenizer
    from tasks.gates import check_distribution

    watch = Stopwatch()
    with watch.compute():
        ids, _ = catalog.items()
        base_index = IndexSnapshot.load(base) if base is not None else None
        if carried_codes is not None:
            codes = carried_codes
        else:
            emb_ids, X = read_embeddings(embeddings.file)
            codes = load_tokenizer(tokenizer.model_dir).encode(_aligned(ids, emb_ids, X))
        unpruned = assign_sids(ids, codes, tokenizer.level_sizes)
        table = _stable_table(ids, codes, tokenizer.level_sizes, base_index, prune.level) if base_index else unpruned
        report = table_report(table)
    gates = [_gate_dict(check_distribution(report, gate)) | {"k": (table.pruning or {}).get("k", 0)}]
    k, dropped, trace = (table.pruning or {}).get("k", 0), False, []
    if not gates[-1]["success"]:
        with watch.compute():
            pruned = choose_k(unpruned, prune.gini_threshold, prune.max_collision_rate, prune.level, prune.max_k)
        table, report, k, dropped, trace = pruned.table, pruned.report, pruned.k, pruned.dropped, pruned.trace
        gates.append(_gate_dict(check_distribution(report, gate)) | {"k": k, "dropped": dropped})
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
        if base_index is not None:
            changes = changed_sid_count(base_index.sids.item_ids, base_index.sids.token_matrix(), ids, table.token_matrix())
    return SidBuild(table, codes, report, gates, int(k), bool(dropped), trace, changes, watch.compute_s)


# ---------------------------------------------------------------- publication


def index_inputs_key(catalog: CatalogVersion, embeddings: EmbeddingsVersion, tokenizer: TokenizerVersion,
                     prune: PruneConfig, gate: GateConfig) -> str:
    """What an index is made from; a published index with the same key needs no rebuild."""
    return version_id(
        "inputs",
        {"items": catalog.items_version, "embeddings": embeddings.version, "tokenizer": tokenizer.version},
        {"prune": prune, "gate": gate},
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
                  sids: SidBuild, extra: dict, home: ProjectHome | None = None) -> IndexVersion:
    """Write the index version in a temporary folder, rename it into place, then move `current` to it."""
    watch = Stopwatch()
    ids, hashes = catalog.items()

    def build(folder: Path) -> dict:
        with watch.compute():
            write_sids(folder / "sids.parquet", sids.table)
            columns = {"item_id": pa.array(ids.astype(str)), "content_hash": pa.array(hashes.astype(str))}
            for level in range(sids.codes.shape[1]):
                columns[f"c{level + 1}"] = pa.array(sids.codes[:, level].astype(np.int32))
            pq.write_table(pa.table(columns), folder / "codes.parquet")
            trie = SidTrie.build(sids.table.token_matrix(), sids.table.vocab_size)
            np.savez(folder / "trie.npz", first_child=trie.first_child, token=trie.token, item=trie.item,
                     edge_key=trie.edge_key, vocab_size=trie.vocab_size)
            _write_json(folder / "report.json", sids.report)
            _write_json(folder / "gates.json", sids.gates)
            _write_json(folder / "prune_trace.json", sids.prune_trace)
            shutil.copytree(tokenizer.model_dir, folder / "tokenizer")
        level2 = next((layer for layer in sids.report["layers"] if layer["level"] == 2), None)
        return {
            "catalog_name": catalog.name,
            "versions": {"catalog": catalog.version, "embeddings": embeddings.version, "tokenizer": tokenizer.version},
            "n_items": len(ids),
            "level_sizes": tokenizer.level_sizes,
            "recon_error": tokenizer.recon_error,
            "layer2_gini": level2["gini"] if level2 else None,
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


def load_sid_table(index_dir: Path) -> SidTable:
    return read_sids(Path(index_dir) / "sids.parquet")



# ---------------------------------------------------------------- the generator


@dataclass
class GeneratorVersion:
    version: str
    path: Path  # model/ (the saved generator), manifest.json with the evaluation
    metrics: dict  # {"valid": {"all"|"head"|"tail": {...}}, "test": {...}}
    stats: dict
    registered: int | None  # MLflow model version, once registered
    reused: bool
    compute_s: float

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


def unpruned_table(index_dir: Path) -> SidTable:
    snapshot = IndexSnapshot.load(index_dir)
    return assign_sids(snapshot.item_ids, snapshot.codes, snapshot.manifest["level_sizes"])


def interactions_of(index_dir: Path, home: ProjectHome | None = None) -> Path:
    """The validated interactions that came with the index's catalog version."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    path = store(home).get("catalog", manifest["versions"]["catalog"]).path / "interactions.parquet"
    if not path.exists():
        raise RqsidError(f"catalog {manifest['catalog_name']} came without interactions; pass --interactions")
    return path


def stage_interactions(source: str, index_dir: Path, home: ProjectHome | None = None) -> Path:
    """Import an interactions file, quarantine rows that name unknown items, store it by content."""
    from rqsid.importers import import_interactions_table
    from rqsid.versioning import file_digest

    version = f"interactions-{file_digest(source)}"

    def build(folder: Path) -> dict:
        raw = read_interactions(source) if source.endswith(".parquet") else import_interactions_table(source)
        clean, quarantine = validate_interactions(raw, load_sid_table(index_dir).item_ids)
        write_interactions(clean, folder / "interactions.parquet")
        write_quarantine(quarantine, folder / "interactions_quarantine.parquet")
        return {"source": source, "rows": clean.num_rows, "quarantined": quarantine.num_rows}

    return store(home).get_or_create("interactions", version, build).path / "interactions.parquet"


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"valid.all.recall_at_10": ...}: MLflow metric names cannot hold '@'."""
    out = {}
    for split, groups in metrics.items():
        for group, values in groups.items():
            for name, value in values.items():
                if value == value:  # NaN (an empty head or tail) is left out
                    out[f"{split}.{group}.{name.replace('@', '_at_')}"] = float(value)
    return out


@task(name="train-generator", cache_policy=NO_CACHE)
def train_and_evaluate(index_dir: Path, interactions_file: Path, config, home: ProjectHome | None = None) -> GeneratorVersion:
    """Train the generative retriever on the index's SIDs, evaluate it on validation and test."""
    from prefect import get_run_logger

    from rqsid.generator.data import SidVocab, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask
    from rqsid.generator.train import evaluate_split, train_generator
    from rqsid.versioning import file_digest

    version = version_id("generator", {"index": Path(index_dir).name, "interactions": file_digest(interactions_file)},
                         identity(config))
    watch = Stopwatch()
    logger = get_run_logger()

    def build(folder: Path) -> dict:
        with watch.compute():
            vocab = SidVocab.from_sid_table(load_sid_table(index_dir))
            seqs = sequences_from_interactions(read_interactions(interactions_file), vocab)
            trained = train_generator(seqs, vocab, config, out_dir=folder / "model", log=logger.info)
            head = head_item_mask(unpruned_table(index_dir), vocab)
            metrics = {split: evaluate_split(trained, seqs, split, head)[0] for split in ("valid", "test")}
        return {"index": Path(index_dir).name, "interactions": str(interactions_file), "metrics": metrics,
                "flat_metrics": flat_metrics(metrics), "stats": trained.stats, "best": trained.best}

    art = store(home).get_or_create("generator", version, build)
    m = art.manifest
    return GeneratorVersion(version, art.path, m["metrics"], m["stats"], m.get("registered"), art.reused, watch.compute_s)


def mark_registered(generator: GeneratorVersion, model_name: str, model_version: int) -> None:
    """Record the MLflow model version in the generator's manifest, so a rerun does not register it twice."""
    path = generator.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["registered"] = model_version
    manifest["model_name"] = model_name
    tmp = path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(path)
