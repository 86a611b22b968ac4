"""Importers: public benchmark formats and plain tables -> canonical catalog and interactions tables.

Every importer returns unvalidated canonical tables (`CATALOG_SCHEMA`, `INTERACTIONS_SCHEMA`);
`rqsid.catalog.validate_*` decides which rows to keep. Bytes that are not UTF-8 are replaced
(U+FFFD) and the affected item ids are listed in the catalog's schema metadata
`rqsid.replaced_utf8` (see `replaced_utf8_ids`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rqsid import RqsidError
from rqsid.schema import CATALOG_SCHEMA, INTERACTIONS_SCHEMA

REPLACED_KEY = b"rqsid.replaced_utf8"
UNKNOWN_BRANDS = {"", "unknown", "n/a", "na", "none", "null", "generic"}


# ---------------------------------------------------------------- helpers


def _read_text(path: Path) -> tuple[str, bool]:
    """The file's text; non-UTF-8 bytes replaced. Returns (text, whether anything was replaced)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def _unescape(text) -> str | None:
    """HTML entities (`L&#39;Oreal`) decoded, whitespace collapsed; '' and None become None."""
    if text is None:
        return None
    text = " ".join(html.unescape(str(text)).split())
    return text or None


def _catalog(rows: dict[str, list]) -> pa.Table:
    """The canonical (not yet validated) catalog; items whose text holds U+FFFD are noted in the metadata."""
    table = pa.table(rows, schema=_nullable(CATALOG_SCHEMA))
    replaced = np.zeros(table.num_rows, dtype=bool)
    for name in ("title", "brand", "description", "extra"):
        replaced |= pc.fill_null(pc.match_substring(table.column(name), "\ufffd"), False).to_numpy(zero_copy_only=False)
    cats = pc.binary_join(pc.fill_null(table.column("categories"), pa.scalar([], pa.list_(pa.string()))), " ")
    replaced |= pc.fill_null(pc.match_substring(cats, "\ufffd"), False).to_numpy(zero_copy_only=False)
    if replaced.any():
        ids = table.column("item_id").filter(pa.array(replaced)).to_pylist()
        table = table.replace_schema_metadata({REPLACED_KEY: json.dumps(ids)})
    return table


def replaced_utf8_ids(table: pa.Table) -> list[str]:
    """Item ids whose text had bytes that were not UTF-8 (replaced by U+FFFD on import)."""
    meta = table.schema.metadata or {}
    return json.loads(meta[REPLACED_KEY]) if REPLACED_KEY in meta else []


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def _interactions(users: list[str], sequences: list[list[str]]) -> pa.Table:
    """Canonical interactions from per-user item sequences in time order (seq 0, 1, 2, ...)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    seq = (np.arange(lengths.sum()) - starts).astype(np.int32)
    n = int(lengths.sum())
    return pa.table(
        {
            "user_id": pa.array(np.repeat(np.asarray(users, dtype=object), lengths), pa.string()),
            "item_id": pa.array([i for s in sequences for i in s], pa.string()),
            "seq": pa.array(seq, pa.int32()),
            "timestamp": pa.nulls(n, pa.int64()),
            "query": pa.nulls(n, pa.string()),
        },
        schema=INTERACTIONS_SCHEMA,
    )


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise RqsidError(f"{what}: {path} does not exist")
    return path


# ---------------------------------------------------------------- Amazon Beauty (P5 / TIGER split)


def split_beauty_attributes(attribute_lists: list[list[str]]) -> list[tuple[str | None, list[str]]]:
    """(brand, category path) per item from P5/S3Rec attribute lists like [brand?, cat1, cat2, ...].

    The brand is optional, so it is recognised from the data: a first attribute that never occurs in
    a later position anywhere is a brand (categories recur as sub-paths), everything else is a category.
    """
    later = {a for attrs in attribute_lists for a in attrs[1:]}
    out = []
    for attrs in attribute_lists:
        if attrs and attrs[0] not in later:
            brand = attrs[0] if attrs[0].strip().lower() not in UNKNOWN_BRANDS else None
            out.append((brand, list(attrs[1:])))
        else:
            out.append((None, list(attrs)))
    return out


def import_beauty(directory: str | Path) -> tuple[pa.Table, pa.Table]:
    """P5 Beauty: items.jsonl (1-based ids kept as strings) and sequential_data.txt (one user per line)."""
    directory = Path(directory)
    text, _ = _read_text(_require(directory / "items.jsonl", "Beauty items"))
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RqsidError(f"items.jsonl line {lineno} is not JSON: {err.msg}") from None
    attrs = [[_unescape(a) for a in (it.get("attributes") or []) if _unescape(a)] for it in items]
    split = split_beauty_attributes(attrs)
    catalog = _catalog(
        {
            "item_id": [str(it.get("item_id")) if it.get("item_id") is not None else None for it in items],
            "title": [_unescape(it.get("title")) for it in items],
            "brand": [b for b, _ in split],
            "categories": [c for _, c in split],
            "description": [_unescape(it.get("description")) for it in items],
            "extra": [None] * len(items),
        }
    )
    seq_text, _ = _read_text(_require(directory / "sequential_data.txt", "Beauty sequences"))
    users, sequences = [], []
    for line in seq_text.splitlines():
        tokens = line.split()
        if tokens:
            users.append(tokens[0])
            sequences.append(tokens[1:])
    return catalog, _interactions(users, sequences)


# ---------------------------------------------------------------- Amazon Industrial & Scientific (2018)


def _split_path(value) -> list[str]:
    """A category path given as 'a,b,c' or as a list; names unescaped, empties dropped."""
    if value is None:
        return []
    parts = value if isinstance(value, list) else str(value).split(",")
    return [p for p in (_unescape(x) for x in parts) if p]


def import_scientific(directory: str | Path) -> tuple[pa.Table, pa.Table | None]:
    """`<Name>.item.json` ({id: {title, description, brand, categories}}) and `<Name>.inter.json` ({user: [items]})."""
    directory = Path(directory)
    item_files = sorted(directory.glob("*.item.json"))
    if not item_files:
        raise RqsidError(f"no *.item.json in {directory}")
    text, _ = _read_text(item_files[0])
    try:
        items: dict = json.loads(text)
    except json.JSONDecodeError as err:
        raise RqsidError(f"{item_files[0]} is not JSON: {err.msg} at line {err.lineno}") from None
    ids = list(items)
    catalog = _catalog(
        {
            "item_id": ids,
            "title": [_unescape(items[i].get("title")) for i in ids],
            "brand": [_brand(items[i].get("brand")) for i in ids],
            "categories": [_split_path(items[i].get("categories")) for i in ids],
            "description": [_unescape(items[i].get("description")) for i in ids],
            "extra": [None] * len(ids),
        }
    )
    inter_file = item_files[0].with_name(item_files[0].name.replace(".item.json", ".inter.json"))
    if not inter_file.exists():
        return catalog, None
    histories: dict = json.loads(_read_text(inter_file)[0])
    users = list(histories)
    return catalog, _interactions(users, [[str(i) for i in histories[u]] for u in users])


def _brand(value) -> str | None:
    brand = _unescape(value)
    return brand if brand and brand.lower() not in UNKNOWN_BRANDS else None


# ---------------------------------------------------------------- plain tables (parquet, CSV, JSONL)

# Common names for each canonical column, most specific first (compared case-insensitively).
CATALOG_ALIASES = {
    "item_id": ["item_id", "itemid", "item", "product_id", "productid", "asin", "sku", "parent_asin", "id"],
    "title": ["title", "name", "product_name", "item_name", "product_title"],
    "brand": ["brand", "brand_name", "manufacturer", "store", "vendor"],
    "categories": ["categories", "category", "category_path", "main_category", "breadcrumbs"],
    "description": ["description", "desc", "product_description", "details", "features", "summary"],
    "extra": ["extra", "attributes", "text", "notes"],
}
INTERACTION_ALIASES = {
    "user_id": ["user_id", "userid", "user", "customer_id", "reviewer_id", "reviewerid", "visitor_id"],
    "item_id": ["item_id", "itemid", "item", "product_id", "productid", "asin", "sku", "parent_asin"],
    "seq": ["seq", "position", "rank", "order"],
    "timestamp": ["timestamp", "time", "ts", "unix_time", "unixreviewtime", "event_time", "date"],
    "query": ["query", "search_query", "search"],
}
CATEGORY_SEPARATORS = (" > ", ">", "|", "/", ",")


def read_any_table(path: str | Path) -> pa.Table:
    """A parquet, CSV/TSV or JSON-lines file as an Arrow table (all CSV columns read as strings)."""
    path = Path(_require(Path(path), "table"))
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    try:
        if suffix.startswith(".parquet") or suffix == ".pq":
            return pq.read_table(path)
        if suffix.startswith((".csv", ".tsv")):
            delimiter = "\t" if suffix.startswith(".tsv") else ","
            return pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types=_all_strings(path, delimiter)),
                read_options=pacsv.ReadOptions(encoding="utf8"),
            )
        if suffix.startswith((".jsonl", ".ndjson", ".json")):
            return _read_jsonl(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise RqsidError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    raise RqsidError(f"{path}: unknown table format {suffix!r} (expected .parquet, .csv, .tsv or .jsonl)")


def _all_strings(path: Path, delimiter: str) -> dict[str, pa.DataType]:
    header = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter)).schema.names
    return {name: pa.string() for name in header}


def _read_jsonl(path: Path) -> pa.Table:
    text, _ = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return pa.Table.from_pylist(json.loads(text))
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RqsidError(f"{path} line {lineno} is not JSON: {err.msg}") from None
    if not rows:
        raise RqsidError(f"{path} has zero rows")
    return pa.Table.from_pylist(rows)


def detect_columns(names: list[str], aliases: dict[str, list[str]]) -> dict[str, str]:
    """canonical name -> source column, by the first alias present (case-insensitive); each source used once."""
    lower = {n.lower(): n for n in names}
    found: dict[str, str] = {}
    for canonical, candidates in aliases.items():
        for candidate in candidates:
            source = lower.get(candidate)
            if source is not None and source not in found.values():
                found[canonical] = source
                break
    return found


def _as_strings(column: pa.ChunkedArray) -> list:
    """Any scalar column as Python strings (ints become '12'), None kept."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_struct(column.type):
        return [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in column.to_pylist()]
    return pc.cast(column, pa.string()).to_pylist() if not pa.types.is_string(column.type) else column.to_pylist()


def _categories(column: pa.ChunkedArray) -> list[list[str]]:
    """A category column as paths: lists kept, strings split on the first separator that occurs."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return [[c for c in (_unescape(x) for x in _flatten(v)) if c] for v in column.to_pylist()]
    values = _as_strings(column)
    sample = " ".join(v for v in values[:1000] if v)
    separator = next((s for s in CATEGORY_SEPARATORS if s in sample), None)
    if separator is None:
        return [[c] if (c := _unescape(v)) else [] for v in values]
    return [[c for c in (_unescape(x) for x in v.split(separator)) if c] if v else [] for v in values]


def _flatten(value) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    return [value]


def import_table(path: str | Path, column_map: dict[str, str] | None = None) -> pa.Table:
    """A plain catalog table -> canonical catalog. `column_map` maps canonical names to source columns;
    unmapped canonical columns are found by common names (item_id/asin/sku/id, title/name, ...)."""
    source = read_any_table(path)
    mapping = _mapping(source, column_map, CATALOG_ALIASES, required=("item_id",), path=path)
    n = source.num_rows
    rows: dict[str, list] = {}
    for name in ("item_id", "title", "brand", "description", "extra"):
        rows[name] = [_unescape(v) for v in _as_strings(source.column(mapping[name]))] if name in mapping else [None] * n
    rows["brand"] = [b if b and b.lower() not in UNKNOWN_BRANDS else None for b in rows["brand"]]
    rows["categories"] = _categories(source.column(mapping["categories"])) if "categories" in mapping else [[] for _ in range(n)]
    if not any(k in mapping for k in ("title", "brand", "categories", "description", "extra")):
        raise RqsidError(f"{path}: no text column found among {source.column_names} (map one with column_map)")
    return _catalog(rows)


def import_interactions_table(path: str | Path, column_map: dict[str, str] | None = None) -> pa.Table:
    """A plain interactions table (one row per event) -> canonical interactions, ordered per user by
    timestamp (else by `seq`, else by file order); `seq` is renumbered 0, 1, 2, ... within each user."""
    source = read_any_table(path)
    mapping = _mapping(source, column_map, INTERACTION_ALIASES, required=("user_id", "item_id"), path=path)
    n = source.num_rows

    def strings(name: str) -> pa.Array:
        return pa.array(_as_strings(source.column(mapping[name])), pa.string()) if name in mapping else pa.nulls(n, pa.string())

    timestamps = _timestamps(source.column(mapping["timestamp"])) if "timestamp" in mapping else pa.nulls(n, pa.int64())
    if "timestamp" in mapping:
        order_key = timestamps
    elif "seq" in mapping:
        order_key = pc.cast(source.column(mapping["seq"]), pa.int64())
    else:
        order_key = pa.array(np.arange(n))
    table = pa.table({"user_id": strings("user_id"), "item_id": strings("item_id"), "timestamp": timestamps,
                      "query": strings("query"), "_key": order_key, "_row": np.arange(n)})
    table = table.sort_by([("user_id", "ascending"), ("_key", "ascending"), ("_row", "ascending")])
    users = pc.fill_null(table.column("user_id"), "").to_numpy(zero_copy_only=False).astype(str)
    first_of_user = np.r_[True, users[1:] != users[:-1]]
    user_start = np.maximum.accumulate(np.where(first_of_user, np.arange(n), 0))
    seq = pa.array((np.arange(n) - user_start).astype(np.int32))
    return pa.Table.from_arrays(
        [table.column("user_id"), table.column("item_id"), seq, table.column("timestamp"), table.column("query")],
        schema=_nullable(INTERACTIONS_SCHEMA),
    )


def _timestamps(column: pa.ChunkedArray) -> pa.Array:
    """Integers kept; timestamps/dates/ISO strings converted to Unix seconds."""
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.int64()).combine_chunks()
    if pa.types.is_floating(column.type):
        return pc.cast(pc.floor(column), pa.int64()).combine_chunks()
    try:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            as_int = pc.cast(column, pa.int64(), safe=True)
            return as_int.combine_chunks()
    except pa.ArrowInvalid:
        pass
    try:
        ts = column if pa.types.is_timestamp(column.type) else pc.cast(column, pa.timestamp("s"))
        return pc.cast(pc.cast(ts, pa.timestamp("s")), pa.int64()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise RqsidError(f"timestamp column has values that are not times ({column.type})") from None


def _mapping(source: pa.Table, column_map, aliases, required, path) -> dict[str, str]:
    mapping = detect_columns(source.column_names, aliases)
    for canonical, name in (column_map or {}).items():
        if canonical not in aliases:
            raise RqsidError(f"column_map: unknown canonical column {canonical!r} (expected one of {list(aliases)})")
        if name not in source.column_names:
            raise RqsidError(f"column_map: {path} has no column {name!r} (columns: {source.column_names})")
        mapping[canonical] = name
    for name in required:
        if name not in mapping:
            raise RqsidError(f"{path}: no {name} column among {source.column_names} (map one with column_map)")
    return mapping


# ---------------------------------------------------------------- choosing by what is at the path

INTERACTION_FILE_NAMES = ("interactions", "inter", "events", "ratings", "reviews")


def detect_kind(source: str | Path) -> str:
    source = Path(source)
    if source.is_dir():
        if (source / "sequential_data.txt").exists() and (source / "items.jsonl").exists():
            return "beauty"
        if any(source.glob("*.item.json")):
            return "scientific"
        if _find_catalog_file(source) is not None:
            return "table"
        raise RqsidError(f"{source}: no known dataset here (Beauty, *.item.json, or a catalog table)")
    if source.exists():
        return "table"
    raise RqsidError(f"{source} does not exist")


def _find_catalog_file(directory: Path) -> Path | None:
    for stem in ("catalog", "items", "products"):
        for ext in (".parquet", ".jsonl", ".csv", ".tsv"):
            if (directory / f"{stem}{ext}").exists():
                return directory / f"{stem}{ext}"
    return None


def _find_interactions_file(directory: Path) -> Path | None:
    for stem in INTERACTION_FILE_NAMES:
        for ext in (".parquet", ".jsonl", ".csv", ".tsv"):
            if (directory / f"{stem}{ext}").exists():
                return directory / f"{stem}{ext}"
    return None


def import_dataset(source: str | Path, kind: str | None = None) -> tuple[pa.Table, pa.Table | None]:
    """(catalog, interactions or None) from a Beauty folder, a Scientific folder, a folder with
    catalog.* (+ interactions.*), or a single catalog file."""
    source = Path(source)
    kind = kind or detect_kind(source)
    if kind == "beauty":
        return import_beauty(source)
    if kind == "scientific":
        return import_scientific(source)
    if kind != "table":
        raise RqsidError(f"unknown import kind {kind!r} (expected beauty, scientific or table)")
    if source.is_file():
        return import_table(source), None
    catalog_file = _find_catalog_file(source)
    if catalog_file is None:
        raise RqsidError(f"{source}: no catalog.parquet/.jsonl/.csv (or items.*, products.*) found")
    inter_file = _find_interactions_file(source)
    return import_table(catalog_file), import_interactions_table(inter_file) if inter_file else None
