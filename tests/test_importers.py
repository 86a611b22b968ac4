"""Importers on the real Beauty and Scientific data, and on plain tables written like users write them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rqsid import RqsidError
from rqsid.catalog import validate_catalog
from rqsid.importers import (
    import_dataset,
    import_interactions_table,
    import_table,
    replaced_utf8_ids,
    split_beauty_attributes,
)


def _n_users(inter: pa.Table) -> int:
    return len(inter.column("user_id").unique())


def test_split_attributes_recognises_brands_from_positions():
    out = split_beauty_attributes([["Acme", "Makeup", "Lips"], ["Makeup", "Eyes"], ["Lips"], ["Unknown", "Makeup"]])
    assert out == [("Acme", ["Makeup", "Lips"]), (None, ["Makeup", "Eyes"]), (None, ["Lips"]), (None, ["Makeup"])]


def test_plain_csv_with_common_column_names(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(
        'sku,name,Brand,category,desc,price\n'
        '0012,"Chef knife, 8""",Kovala,Kitchen > Cutlery > Chef Knives,Sharp,19.9\n'
        '0013,Paring knife,unknown,Kitchen > Cutlery,,5\n'
        '0012,Duplicate,Kovala,Kitchen,,1\n'
    )
    catalog = import_table(path)
    rows = catalog.to_pylist()
    assert rows[0] == {"item_id": "0012", "title": 'Chef knife, 8"', "brand": "Kovala",
                       "categories": ["Kitchen", "Cutlery", "Chef Knives"], "description": "Sharp", "extra": None}
    assert rows[1]["brand"] is None and rows[1]["description"] is None  # leading zeros kept: ids read as text
    clean, quarantine = validate_catalog(catalog)
    assert clean.num_rows == 2 and quarantine.column("reason").to_pylist() == ["duplicate item_id"]


def test_jsonl_with_column_map_and_list_categories(tmp_path):
    path = tmp_path / "catalog.jsonl"
    rows = [{"pid": 7, "label": "Tent", "cats": ["Sports", "Camping"], "notes": "2 person"},
            {"pid": 8, "label": "Stove", "cats": ["Sports", "Camping"], "notes": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    catalog = import_table(path, column_map={"item_id": "pid", "title": "label", "categories": "cats", "extra": "notes"})
    assert catalog.column("item_id").to_pylist() == ["7", "8"]
    assert catalog.column("categories").to_pylist()[0] == ["Sports", "Camping"]
    with pytest.raises(RqsidError, match="no column 'nope'"):
        import_table(path, column_map={"title": "nope"})
    with pytest.raises(RqsidError, match="no item_id column"):
        import_table(path)


def test_non_utf8_bytes_are_replaced_and_noted(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"id": "a", "title": "Caf\xe9 mug"}\n{"id": "b", "title": "Plain mug"}\n')
    catalog = import_table(path)
    assert catalog.column("title").to_pylist()[0] == "Caf\ufffd mug"
    assert replaced_utf8_ids(catalog) == ["a"]


def test_folder_of_tables_with_interactions_ordered_by_time(tmp_path):
    pq.write_table(pa.table({"item_id": ["1", "2", "3"], "title": ["a", "b", "c"]}), tmp_path / "catalog.parquet")
    pq.write_table(
        pa.table({"user": ["u2", "u1", "u1", "u1"], "item": [3, 2, 1, 3], "timestamp": [5, 30, 10, 20]}),
        tmp_path / "interactions.parquet",
    )
    catalog, inter = import_dataset(tmp_path)
    assert catalog.num_rows == 3
    u1 = inter.filter(pc.equal(inter.column("user_id"), "u1"))
    assert u1.column("item_id").to_pylist() == ["1", "3", "2"] and u1.column("seq").to_pylist() == [0, 1, 2]
    assert np.array_equal(u1.column("timestamp").to_numpy(), [10, 20, 30])
    direct = import_interactions_table(tmp_path / "interactions.parquet")
    assert direct.to_pylist() == inter.to_pylist()


def test_import_command_writes_tables_and_quarantine(tmp_path, capsys):
    import argparse

    from cli.data import register
    from rqsid.catalog import read_catalog, read_interactions

    source = tmp_path / "src"
    source.mkdir()
    (source / "catalog.jsonl").write_text(
        '{"item_id": "1", "title": "Tent"}\n{"item_id": "1", "title": "Again"}\n{"item_id": "2", "title": ""}\n'
        '{"item_id": "3", "title": "Stove"}\n'
    )
    (source / "interactions.csv").write_text("user_id,item_id\nu1,1\nu1,3\nu1,2\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", str(source), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert read_catalog(tmp_path / "out" / "catalog.parquet").column("item_id").to_pylist() == ["1", "3"]
    assert read_interactions(tmp_path / "out" / "interactions.parquet").column("item_id").to_pylist() == ["1", "3"]
    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert sorted(quarantine.column("reason").to_pylist()) == ["duplicate item_id", "no text"]
    assert pq.read_table(tmp_path / "out" / "quarantine_interactions.parquet").column("reason").to_pylist() == ["unknown item_id"]
    out = capsys.readouterr().out
    assert "catalog: 2 items" in out and "quarantined 2 rows" in out
