"""The synthetic demo catalog: valid, labelled, deterministic, skewed like a shop, learnable histories."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rqsid import RqsidError
from rqsid.catalog import read_catalog, validate_catalog, validate_interactions, write_catalog
from rqsid.synthetic import SYNTHETIC_MARK, is_synthetic, make_demo_catalog


@pytest.fixture(scope="module")
def demo():
    return make_demo_catalog(n_items=1500, seed=3)


def _counts(inter: pa.Table) -> np.ndarray:
    return np.sort(pc.value_counts(inter.column("item_id")).field("counts").to_numpy())[::-1]


def test_demo_tables_are_valid_and_labelled(demo, tmp_path):
    catalog, inter = demo
    clean, quarantine = validate_catalog(catalog)
    assert clean.num_rows == 1500 and quarantine.num_rows == 0
    inter_clean, inter_bad = validate_interactions(inter, catalog.column("item_id"))
    assert inter_bad.num_rows == 0 and inter_clean.num_rows == inter.num_rows
    assert all(SYNTHETIC_MARK in e for e in catalog.column("extra").to_pylist())
    assert is_synthetic(catalog) and is_synthetic(inter)
    write_catalog(catalog, tmp_path / "c.parquet")
    assert is_synthetic(read_catalog(tmp_path / "c.parquet"))  # the label survives a round trip


def test_three_level_categories_and_brands_per_category(demo):
    catalog, _ = demo
    paths = catalog.column("categories").to_pylist()
    assert all(len(p) == 3 for p in paths)
    brands = catalog.column("brand").to_pylist()
    tops_of_brand: dict[str, set] = {}
    for brand, path in zip(brands, paths, strict=True):
        tops_of_brand.setdefault(brand, set()).add(path[0])
    assert all(len(tops) == 1 for tops in tops_of_brand.values())  # a brand sells in one top category
    titles = catalog.column("title").to_pylist()
    assert all(path[2] in title and brand in title for title, path, brand in zip(titles, paths, brands, strict=True))


def test_popularity_is_zipf_like(demo):
    catalog, inter = demo
    counts = _counts(inter)
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile_share > 0.3  # uniform would be 0.1
    ranks = np.arange(1, len(counts) + 1)
    head = slice(0, len(counts) // 2)
    slope = np.polyfit(np.log(ranks[head]), np.log(counts[head]), 1)[0]
    assert -1.5 < slope < -0.3  # a power-law-like decay, neither flat nor a single blockbuster
    leaf_sizes = np.sort(np.unique([p[2] for p in catalog.column("categories").to_pylist()], return_counts=True)[1])
    assert leaf_sizes[-1] > 5 * np.median(leaf_sizes)  # popular categories hold many more items


def test_histories_are_long_enough_and_stay_in_few_categories(demo):
    catalog, inter = demo
    lengths = pc.value_counts(inter.column("user_id")).field("counts").to_numpy()
    assert lengths.min() >= 5 and 6 < lengths.mean() < 12
    ids, paths = catalog.column("item_id").to_pylist(), catalog.column("categories").to_pylist()
    leaf_of = {item: path[2] for item, path in zip(ids, paths, strict=True)}
    top_of = {item: path[0] for item, path in zip(ids, paths, strict=True)}
    users = inter.column("user_id").to_numpy(zero_copy_only=False)
    leaves = np.array([leaf_of[i] for i in inter.column("item_id").to_pylist()])
    tops = np.array([top_of[i] for i in inter.column("item_id").to_pylist()])
    same_user = users[1:] == users[:-1]
    same_leaf = (leaves[1:] == leaves[:-1])[same_user].mean()
    _, leaf_share = np.unique(leaves, return_counts=True)
    chance = ((leaf_share / leaf_share.sum()) ** 2).sum()
    assert same_leaf > 0.5 and same_leaf > 5 * chance  # the next item is predictable from the last
    same_top = (tops[1:] == tops[:-1])[same_user].mean()
    assert same_top > 0.75


def test_deterministic_under_seed():
    a = make_demo_catalog(n_items=300, seed=11)
    b = make_demo_catalog(n_items=300, seed=11)
    c = make_demo_catalog(n_items=300, seed=12)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[0].equals(c[0])


def test_sizes_are_honoured_and_bad_sizes_rejected():
    catalog, inter = make_demo_catalog(n_items=50, n_users=40, seed=0)
    assert catalog.num_rows == 50 and len(inter.column("user_id").unique()) == 40
    with pytest.raises(RqsidError, match="at least 10 items"):
        make_demo_catalog(n_items=3)


def test_demo_catalog_command_writes_canonical_tables(tmp_path, capsys):
    import argparse

    from cli.data import register
    from rqsid.catalog import read_interactions

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo-catalog", "--out", str(tmp_path), "--items", "200", "--seed", "5"])
    assert args.func(args) == 0
    catalog = read_catalog(tmp_path / "catalog.parquet")
    assert catalog.num_rows == 200 and is_synthetic(catalog)
    assert read_interactions(tmp_path / "interactions.parquet").num_rows > 5 * 400
    assert "synthetic" in capsys.readouterr().out
