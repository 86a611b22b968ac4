"""Canonical tables: validation with quarantine, schema checks, parquet round trips, item text."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rqsid import RqsidError
from rqsid.catalog import (
    item_text,
    read_catalog,
    read_interactions,
    validate_catalog,
    validate_interactions,
    write_catalog,
    write_interactions,
)
from rqsid.schema import CATALOG_SCHEMA, INTERACTIONS_SCHEMA
from synthetic_tables import shop


def _catalog(rows: list[dict]) -> pa.Table:
    empty = {"item_id": None, "title": None, "brand": None, "categories": None, "description": None, "extra": None}
    full = [empty | r for r in rows]
    return pa.Table.from_pylist(full, schema=pa.schema([f.with_nullable(True) for f in CATALOG_SCHEMA]))


def test_quarantine_duplicates_missing_ids_and_empty_text():
    table = _catalog(
        [
            {"item_id": "a", "title": "Red lipstick"},
            {"item_id": "b", "categories": ["Makeup", "Lips"]},  # no title, but categories count as text
            {"item_id": "a", "title": "Second row with id a"},
            {"item_id": "", "title": "No id"},
            {"item_id": None, "title": "Null id"},
            {"item_id": "c", "title": "  ", "brand": "", "categories": ["", " "], "description": None},
            {"item_id": "d", "description": "Only a description"},
            {"item_id": "a", "title": "Third a"},
        ]
    )
    clean, quarantine = validate_catalog(table)
    assert clean.column("item_id").to_pylist() == ["a", "b", "d"]
    assert clean.column("title").to_pylist()[0] == "Red lipstick"  # the first of the duplicates is kept
    reasons = dict(zip(quarantine.column("title").to_pylist(), quarantine.column("reason").to_pylist(), strict=True))
    assert reasons == {
        "Second row with id a": "duplicate item_id",
        "No id": "missing item_id",
        "Null id": "missing item_id",
        "  ": "no text",
        "Third a": "duplicate item_id",
    }


def test_zero_rows_and_all_bad_raise():
    with pytest.raises(RqsidError, match="zero rows"):
        validate_catalog(_catalog([]))
    with pytest.raises(RqsidError, match="no valid rows"):
        validate_catalog(_catalog([{"item_id": "x"}]))


def test_wrong_column_type_names_the_column():
    table = pa.table({"item_id": ["1", "2"], "title": ["a", "b"], "categories": [1.5, 2.5]})
    with pytest.raises(RqsidError, match="'categories'"):
        validate_catalog(table)
    with pytest.raises(RqsidError, match="'item_id'"):
        validate_catalog(pa.table({"title": ["a"]}))
    inter = pa.table({"user_id": ["u"], "item_id": ["1"], "seq": ["first"]})
    with pytest.raises(RqsidError, match="'seq'"):
        validate_interactions(inter, ["1"])


def test_interactions_quarantine_unknown_items_and_duplicate_positions():
    inter = pa.table(
        {
            "user_id": ["u1", "u1", "u1", "u2", None, "u2"],
            "item_id": ["1", "2", "999", "1", "2", "2"],
            "seq": pa.array([0, 1, 2, 0, 0, 0], pa.int32()),
        }
    )
    clean, quarantine = validate_interactions(inter, ["1", "2", "3"])
    assert clean.num_rows == 3 and clean.schema.equals(INTERACTIONS_SCHEMA)
    assert sorted(quarantine.column("reason").to_pylist()) == ["duplicate (user_id, seq)", "missing user_id", "unknown item_id"]


def test_parquet_round_trip_keeps_rows_and_metadata(tmp_path):
    catalog, interactions = shop()
    subset = catalog.slice(0, 200).replace_schema_metadata({b"rqsid.synthetic": b"false"})
    write_catalog(subset, tmp_path / "catalog.parquet")
    back = read_catalog(tmp_path / "catalog.parquet")
    assert back.schema.equals(CATALOG_SCHEMA) and back.to_pylist() == subset.to_pylist()
    assert back.schema.metadata[b"rqsid.synthetic"] == b"false"
    write_interactions(interactions.slice(0, 500), tmp_path / "inter.parquet")
    assert read_interactions(tmp_path / "inter.parquet").to_pylist() == interactions.slice(0, 500).to_pylist()
    with pytest.raises(RqsidError, match="does not exist"):
        read_catalog(tmp_path / "missing.parquet")


def test_item_text_composition_and_cut():
    table = _catalog(
        [
            {"item_id": "1", "title": "Nail Polish.", "brand": "OPI", "categories": ["Makeup", "Nails"],
             "description": "A  bright red.", "extra": "Size: 15 ml"},
            {"item_id": "2", "categories": ["Skin Care"]},
            {"item_id": "3", "title": "x" * 50, "description": "y" * 50},
        ]
    )
    texts = item_text(table, max_chars=60)
    assert texts[0] == "Nail Polish. Brand: OPI. Categories: Makeup > Nails. A brigh"
    assert item_text(table)[0] == "Nail Polish. Brand: OPI. Categories: Makeup > Nails. A bright red. Size: 15 ml"
    assert texts[1] == "Categories: Skin Care"
    assert len(texts[2]) == 60
