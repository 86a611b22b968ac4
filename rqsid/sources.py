"""Where a catalog comes from: the synthetic demo shop, a canonical parquet file, or a dataset folder or
table that the importers read; and the name its published indexes go under."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

DEMO_SOURCE = "demo"
DEMO_ITEMS = 3000


def is_demo(source: str | None) -> bool:
    return source in (None, "", DEMO_SOURCE)


def catalog_name_of(source: str | None) -> str:
    """The catalog's name (its index registry and MLflow experiment): the file stem or the folder name."""
    if is_demo(source):
        return DEMO_SOURCE
    path = Path(source)
    return path.stem if path.is_file() else path.resolve().name


def read_source(source: str | None, demo_items: int = DEMO_ITEMS) -> tuple[pa.Table, pa.Table | None]:
    """(catalog, interactions or None) of a source, unvalidated."""
    if is_demo(source):
        from rqsid.synthetic import make_demo_catalog

        return make_demo_catalog(n_items=demo_items, seed=0)
    path = Path(source)
    if path.suffix == ".parquet" and path.is_file():
        from rqsid.catalog import read_raw_catalog

        return read_raw_catalog(path), None
    from rqsid.importers import import_dataset

    return import_dataset(path)


def read_interactions_source(source: str | Path) -> pa.Table:
    """Interactions from a canonical parquet file or any table the importers read (CSV, JSONL, ...)."""
    if str(source).endswith(".parquet"):
        from rqsid.catalog import read_raw_interactions

        return read_raw_interactions(source)
    from rqsid.importers import import_interactions_table

    return import_interactions_table(source)


def check_source(source: str | None, interactions: str | None = None, codebook_size: int | None = None) -> str:
    """Read and validate a catalog (and interactions) the way a re-index will, before anything is embedded
    or fitted: RqsidError (one line) when nothing usable is left or when there are fewer items than a
    codebook has codes. Returns a one-line summary, with the rows that will be quarantined."""
    from rqsid.catalog import quarantine_reasons, require_items_for_codebook, validate_catalog, validate_interactions

    raw, raw_inter = read_source(source)
    clean, quarantine = validate_catalog(raw)
    if codebook_size is not None:
        require_items_for_codebook(clean.num_rows, codebook_size, quarantine.num_rows)
    summary = f"catalog {catalog_name_of(source)}: {clean.num_rows} items"
    if quarantine.num_rows:
        reasons = ", ".join(f"{n} {reason}" for reason, n in quarantine_reasons(quarantine).items())
        summary += f"; {quarantine.num_rows} rows will be quarantined ({reasons})"
    if interactions:
        raw_inter = read_interactions_source(interactions)
    if raw_inter is not None:
        inter, inter_quarantine = validate_interactions(raw_inter, clean.column("item_id"))
        summary += f"; {inter.num_rows} interactions" + (f" ({inter_quarantine.num_rows} to quarantine)"
                                                         if inter_quarantine.num_rows else "")
    return summary
