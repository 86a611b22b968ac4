"""The embedding stage: vectors of the catalog's items on Dask (only new and changed items are embedded
when a published index has the rest), then the GX embedding suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid.checkpoints import reach
from rqsid.config import EmbedConfig, OrchestrationConfig
from rqsid.embed import read_embeddings, write_embeddings
from rqsid.home import ProjectHome
from rqsid.index import index_manifest, item_delta
from rqsid.lookup import align_embeddings
from rqsid.versioning import version_id
from tasks.catalog import CatalogVersion
from tasks.common import GateFailed, Stopwatch, gate_dict, store


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

    def aligned(self, item_ids: np.ndarray) -> np.ndarray:
        """The vectors in the order of `item_ids` (every id must have one)."""
        emb_ids, X = read_embeddings(self.file)
        return align_embeddings(item_ids, emb_ids, X, self.file)


def _previous_embeddings(previous: Path | None, config: EmbedConfig, home: ProjectHome | None):
    """(ids, hashes, X) of the embeddings behind a published index, when made with the same embed config."""
    if previous is None:
        return None
    emb_version = index_manifest(previous)["versions"]["embeddings"]
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
    return ids, hashes, align_embeddings(ids, emb_ids, X, emb.path)


@task(name="embed", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def embed_items(catalog: CatalogVersion, config: EmbedConfig, orchestration: OrchestrationConfig,
                previous_index: Path | None = None, home: ProjectHome | None = None) -> EmbeddingsVersion:
    """Embeddings of the catalog on Dask; items whose text is unchanged since the previous index keep
    their vectors, so a nightly run embeds only new and changed items."""
    version = version_id("embeddings", {"items": catalog.items_version}, config.identity())
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
            new_X = align_embeddings(ids[todo], new_ids, new_X, folder)
            X = new_X if X is None else X
            X[todo] = new_X
        with watch.compute():
            write_embeddings(folder / "embeddings.parquet", ids, X)
        reach("embed")
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
    return gate_dict(result) | {"results": result.results}
