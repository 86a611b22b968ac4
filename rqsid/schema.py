"""Arrow schemas of the canonical tables. Every table rqsid writes is parquet with one of these."""

from __future__ import annotations

import pyarrow as pa

# One row per item. Text fields may be null; categories is the category path, most general first.
CATALOG_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("extra", pa.string()),
    ]
)

# One row per interaction. `seq` orders a user's history (0, 1, 2, ...); timestamp is optional.
INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("seq", pa.int32(), nullable=False),
        pa.field("timestamp", pa.int64()),
        pa.field("query", pa.string()),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )
