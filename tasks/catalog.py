"""The catalog stage: import a source, run the GX catalog suite, quarantine bad rows, store the clean version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid.catalog import (
    item_text,
    quarantine_reasons,
    validate_catalog,
    validate_interactions,
    write_catalog,
    write_interactions,
    write_quarantine,
)
from rqsid.home import ProjectHome
from rqsid.sources import DEMO_ITEMS, catalog_name_of, read_interactions_source, read_source
from rqsid.versioning import catalog_version, interactions_version, item_content_hashes, version_id
from tasks.common import GateFailed, Stopwatch, gate_dict, store


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
        return tuple(table.column(c).to_numpy(zero_copy_only=False).astype(object) for c in ("item_id", "content_hash"))


@task(name="load-catalog", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_catalog(source: str | None, interactions: str | None = None, demo_items: int = DEMO_ITEMS,
                 home: ProjectHome | None = None) -> CatalogVersion:
    """Import the catalog, run the GX catalog suite, quarantine bad rows, store the clean version."""
    from tasks.gates import check_catalog

    watch = Stopwatch()
    with watch.compute():
        raw, raw_inter = read_source(source, demo_items)
        if interactions:
            raw_inter = read_interactions_source(interactions)
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
    items_version = catalog_version(ids, hashes)
    inter_version = interactions_version(inter_clean) if inter_clean is not None else None
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
        quarantine_reasons=quarantine_reasons(quarantine),
        n_interactions=None if inter_clean is None else inter_clean.num_rows,
        gates={"catalog_raw": gate_dict(raw_gate), "catalog_clean": gate_dict(clean_gate)},
        reused=artifact.reused,
        compute_s=watch.compute_s,
    )


def _gate_frame(table: pa.Table):
    """What the GX catalog suite sees: ids, and as "description" the whole text that gets embedded
    (title, brand, categories, description, extra), so an item with only a brand and a category path
    (7 Beauty items have no title) counts as having text, as it does for the library."""
    import pandas as pd

    ids = table.column("item_id").to_pylist()
    return pd.DataFrame({"item_id": ids, "title": table.column("title").to_pylist(), "description": item_text(table)})
