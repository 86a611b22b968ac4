"""The canonical catalog and interactions tables: reading, writing, validation with quarantine, item text.

Bad rows are never dropped silently: `validate_catalog` / `validate_interactions` split a table into
the rows we keep and a quarantine table (the bad rows plus a `reason` column) that the caller writes
next to the clean data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rqsid import RqsidError
from rqsid.schema import CATALOG_SCHEMA, INTERACTIONS_SCHEMA

TEXT_FIELDS = ("title", "brand", "description", "extra")
REASON_FIELD = pa.field("reason", pa.string())


# ---------------------------------------------------------------- conformance to the schemas


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Reorder/cast `table` to `schema`; absent nullable columns become nulls. Wrong types raise RqsidError."""
    if table.num_rows == 0:
        raise RqsidError(f"{what} has zero rows")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise RqsidError(f"{what} lacks the required column {field.name!r}")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        columns.append(_cast_column(table.column(field.name), field, what))
    return pa.Table.from_arrays(columns, schema=_relaxed(schema, table.schema.metadata))


def _relaxed(schema: pa.Schema, metadata=None) -> pa.Schema:
    """The schema with every field nullable, so that validation can see (and quarantine) null ids."""
    return pa.schema([f.with_nullable(True) for f in schema], metadata=metadata)


def _strict(table: pa.Table, schema: pa.Schema, what: str = "table") -> pa.Table:
    """Cast to the canonical schema, keeping the table's metadata (e.g. rqsid.synthetic); a null in a required
    column is an RqsidError naming the rows (validation quarantines them before this point)."""
    for field in schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            rows = np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))
            raise RqsidError(f"{what}: {len(rows)} rows without {field.name} (rows {', '.join(map(str, rows[:5]))}"
                             f"{', ...' if len(rows) > 5 else ''}); `rqsid import` quarantines such rows")
    return table.cast(schema.with_metadata(table.schema.metadata or {}))


def _cast_column(column: pa.ChunkedArray, field: pa.Field, what: str) -> pa.ChunkedArray:
    if column.type == field.type:
        return column
    if pa.types.is_null(column.type):
        return pa.chunked_array([pa.nulls(len(column), field.type)])
    if _castable(column.type, field.type):
        try:
            return column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    raise RqsidError(f"{what} column {field.name!r} has type {column.type}, expected {field.type}")


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Safe casts only: string-likes to strings, integers to integers, lists of strings to lists of strings."""
    stringish = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(target) for f in stringish):
        return any(f(source) for f in stringish) or pa.types.is_dictionary(source)
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    if pa.types.is_list(target):
        is_list = pa.types.is_list(source) or pa.types.is_large_list(source)
        return is_list and _castable(source.value_type, target.value_type)
    return False


# ---------------------------------------------------------------- parquet I/O


def write_catalog(table: pa.Table, path: str | Path) -> Path:
    return _write(_strict(conform(table, CATALOG_SCHEMA, "catalog"), CATALOG_SCHEMA), path)


def write_interactions(table: pa.Table, path: str | Path) -> Path:
    return _write(_strict(conform(table, INTERACTIONS_SCHEMA, "interactions"), INTERACTIONS_SCHEMA), path)


def write_quarantine(table: pa.Table, path: str | Path) -> Path:
    return _write(table, path)


def _write(table: pa.Table, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_catalog(path: str | Path) -> pa.Table:
    """A canonical catalog file (as `rqsid import` writes it); RqsidError on rows without an id."""
    return _strict(read_raw_catalog(path), CATALOG_SCHEMA, f"catalog {path}")


def read_raw_catalog(path: str | Path) -> pa.Table:
    """A catalog parquet in the canonical columns, not yet validated: rows without an id are kept, for
    `validate_catalog` to quarantine."""
    return conform(_read(path), CATALOG_SCHEMA, f"catalog {path}")


def read_interactions(path: str | Path) -> pa.Table:
    """A canonical interactions file; RqsidError on rows without a user, item or seq."""
    return _strict(read_raw_interactions(path), INTERACTIONS_SCHEMA, f"interactions {path}")


def read_raw_interactions(path: str | Path) -> pa.Table:
    """An interactions parquet in the canonical columns, not yet validated (see read_raw_catalog)."""
    return conform(_read(path), INTERACTIONS_SCHEMA, f"interactions {path}")


def _read(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise RqsidError(f"{path} does not exist")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise RqsidError(f"{path} is not a readable parquet file: {err}") from None


# ---------------------------------------------------------------- validation with quarantine


def _quarantine(table: pa.Table, bad: dict[str, np.ndarray]) -> tuple[pa.Table, pa.Table]:
    """Split `table` by per-reason boolean masks (first reason wins) into (clean, quarantine+reason)."""
    reasons = np.full(table.num_rows, None, dtype=object)
    for reason, mask in bad.items():
        reasons[mask & (reasons == None)] = reason  # noqa: E711 (element-wise on an object array)
    is_bad = reasons != None  # noqa: E711
    clean = table.filter(pa.array(~is_bad))
    quarantine = table.filter(pa.array(is_bad)).append_column(REASON_FIELD, pa.array(reasons[is_bad], pa.string()))
    return clean, quarantine


def _blank(column: pa.ChunkedArray) -> np.ndarray:
    """True where a string column is null or only whitespace."""
    stripped = pc.utf8_trim_whitespace(column)
    return pc.fill_null(pc.equal(pc.utf8_length(stripped), 0), True).to_numpy(zero_copy_only=False)


def _duplicates(values: np.ndarray) -> np.ndarray:
    """True for every occurrence of a value after its first."""
    _, first = np.unique(values, return_index=True)
    dup = np.ones(len(values), dtype=bool)
    dup[first] = False
    return dup


def quarantine_reasons(quarantine: pa.Table) -> dict[str, int]:
    """How many quarantined rows each reason holds, by reason."""
    if quarantine.num_rows == 0:
        return {}
    reasons, counts = np.unique(quarantine.column("reason").to_numpy(zero_copy_only=False).astype(str), return_counts=True)
    return {str(r): int(c) for r, c in zip(reasons, counts, strict=True)}


def validate_catalog(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(clean catalog, quarantine) — missing ids, duplicate ids (first kept), rows with no text at all."""
    table = conform(table, CATALOG_SCHEMA, "catalog")
    ids = table.column("item_id")
    missing_id = _blank(ids)
    id_values = pc.fill_null(ids, "").to_numpy(zero_copy_only=False).astype(object)
    duplicate = _duplicates(np.where(missing_id, None, id_values).astype(str)) & ~missing_id
    no_text = np.logical_and.reduce([_blank(table.column(f)) for f in TEXT_FIELDS] + [_no_categories(table)])
    clean, quarantine = _quarantine(
        table, {"missing item_id": missing_id, "duplicate item_id": duplicate, "no text": no_text}
    )
    if clean.num_rows == 0:
        raise RqsidError(f"catalog has no valid rows ({quarantine.num_rows} quarantined: "
                         f"{_reasons_text(quarantine)})")
    return _strict(clean, CATALOG_SCHEMA), quarantine


def require_items_for_codebook(n_items: int, codebook_size: int, quarantined: int = 0) -> None:
    """A tokenizer fit needs at least as many items as a codebook has codes: say so before any embedding."""
    if n_items < codebook_size:
        after = f" after quarantining {quarantined} rows" if quarantined else ""
        raise RqsidError(f"catalog has {n_items} valid items{after} but quantizer.codebook_size={codebook_size}: "
                         "a tokenizer needs at least as many items as codes; lower quantizer.codebook_size")


def _reasons_text(quarantine: pa.Table) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in quarantine_reasons(quarantine).items())


def _no_categories(table: pa.Table) -> np.ndarray:
    cats = table.column("categories")
    joined = pc.binary_join(pc.fill_null(cats, pa.scalar([], cats.type)), "")
    return _blank(joined)


def validate_interactions(inter: pa.Table, item_ids) -> tuple[pa.Table, pa.Table]:
    """(clean interactions, quarantine) — missing user, unknown item, duplicate (user, seq)."""
    inter = conform(inter, INTERACTIONS_SCHEMA, "interactions")
    known = _id_array(item_ids)
    missing_user = _blank(inter.column("user_id"))
    missing_item = _blank(inter.column("item_id"))
    unknown = ~pc.fill_null(pc.is_in(inter.column("item_id"), value_set=known), False).to_numpy(zero_copy_only=False)
    missing_seq = pc.is_null(inter.column("seq")).to_numpy(zero_copy_only=False)
    keys = pc.binary_join_element_wise(
        pc.fill_null(inter.column("user_id"), ""), pc.cast(pc.fill_null(inter.column("seq"), -1), pa.string()), "\x1f"
    ).to_numpy(zero_copy_only=False).astype(str)
    clean, quarantine = _quarantine(
        inter,
        {
            "missing user_id": missing_user,
            "missing item_id": missing_item,
            "missing seq": missing_seq,
            "unknown item_id": unknown & ~missing_item,
            "duplicate (user_id, seq)": _duplicates(keys),
        },
    )
    if clean.num_rows == 0:
        raise RqsidError(f"interactions have no valid rows ({quarantine.num_rows} quarantined: "
                         f"{_reasons_text(quarantine)})")
    return _strict(clean, INTERACTIONS_SCHEMA), quarantine


def _id_array(item_ids) -> pa.Array:
    """Item ids given as an Arrow array/chunked array, numpy array or list, as one Arrow string array."""
    if isinstance(item_ids, pa.ChunkedArray):
        item_ids = item_ids.combine_chunks()
    if isinstance(item_ids, pa.Array):
        return item_ids.cast(pa.string())
    return pa.array([None if i is None else str(i) for i in item_ids], pa.string())


# ---------------------------------------------------------------- the text we embed


def item_text(table: pa.Table, max_chars: int = 2000) -> list[str]:
    """One string per item: "title. Brand: b. Categories: a > b > c. description. extra" (empty parts skipped)."""
    cols = {name: table.column(name).to_pylist() for name in ("title", "brand", "categories", "description", "extra")}
    texts = []
    for title, brand, cats, desc, extra in zip(*cols.values(), strict=True):
        brand = _clean(brand)
        path = " > ".join(c.strip() for c in cats or [] if c and c.strip())
        parts = [
            _clean(title),
            f"Brand: {brand}" if brand else "",
            f"Categories: {path}" if path else "",
            _clean(desc),
            _clean(extra),
        ]
        texts.append(". ".join(p for p in parts if p)[:max_chars])
    return texts


def _clean(text: str | None) -> str:
    """Whitespace collapsed, trailing full stop dropped (we join parts with '. ')."""
    if not text:
        return ""
    return " ".join(text.split()).rstrip(".").strip()
