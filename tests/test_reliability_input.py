"""Bad input through the real `rqsid` CLI (in-process `cli.main.main`): each case either exits 2 with one
`error: ...` line naming the problem and the rows, or is accepted with the bad rows quarantined and counted;
never a traceback, never a silent loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.main import main
from cli_runner import run_process
from rqsid.catalog import item_text, read_catalog
from rqsid.config import QuantizerConfig
from rqsid.embed import write_embeddings
from rqsid.home import ProjectHome
from rqsid.quantize import make_tokenizer
from rqsid.sids import assign_sids, write_sids

TINY = ["--set", "quantizer.epochs=2", "--set", "quantizer.codebook_size=8", "--set", "quantizer.levels=3"]
GOOD_ROWS = [{"item_id": str(i), "title": f"steel water bottle {i}", "description": "keeps drinks cold"} for i in range(5)]


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _embeddings(path: Path, n: int, d: int = 16, seed: int = 0, poison: dict | None = None) -> str:
    X = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    for (row, col), value in (poison or {}).items():
        X[row, col] = value
    return str(write_embeddings(path, np.array([str(i) for i in range(n)], dtype=object), X))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, str]:
    """A tiny tokenizer and its SID table over 300 items (16-d), for the cases that need them."""
    root = tmp_path_factory.mktemp("fitted")
    X = np.random.default_rng(1).normal(size=(300, 16)).astype(np.float32)
    tok = make_tokenizer(QuantizerConfig(epochs=2, codebook_size=8, levels=3)).fit(X, progress=False)
    tok.save(root / "tokenizer")
    ids = np.array([str(i) for i in range(300)], dtype=object)
    write_sids(root / "sids.parquet", assign_sids(ids, tok.encode(X), tok.codebook_sizes))
    return {"tokenizer": str(root / "tokenizer"), "sids": str(root / "sids.parquet"), "root": str(root)}


def _interactions(path: Path, users: int, per_user: int, unknown_at: int | None = None,
                  null_at: tuple[str, int] | None = None) -> str:
    columns = {"user_id": [f"u{u}" for u in range(users) for _ in range(per_user)],
               "item_id": [str((u * 7 + j) % 300) for u in range(users) for j in range(per_user)]}
    if unknown_at is not None:
        columns["item_id"][unknown_at] = "NO-SUCH-ITEM"
    if null_at is not None:
        columns[null_at[0]][null_at[1]] = None
    pq.write_table(pa.table({**{k: pa.array(v, pa.string()) for k, v in columns.items()},
                             "seq": pa.array([j for _ in range(users) for j in range(per_user)], pa.int32())}), path)
    return str(path)


def _files(tmp: Path, fitted: dict[str, str]) -> dict:
    """Inputs by case name, made on demand (each case builds only its own)."""
    non_utf8 = tmp / "non_utf8.jsonl"
    non_utf8.write_bytes(b'{"item_id": "1", "title": "fine"}\n{"item_id": "2", "title": "bad \xff\xfe bytes"}\n')
    (tmp / "zero.jsonl").write_text("")
    pq.write_table(pa.table({"item_id": [1, 2, 3], "title": [1.5, 2.5, 3.5]}), tmp / "types.parquet")
    pq.write_table(pa.table({"name": ["a", "b"], "title": ["x", "y"]}), tmp / "no_id.parquet")
    (tmp / "bad.json").write_text("{not json")
    (tmp / "bad_keys.index.json").write_text('{"first": ["<a_1>", "<b_2>"]}')
    (tmp / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    _catalog(tmp / "null_ids.parquet", ["a", None, "b", "a", None, "c"])  # 2 null ids, 1 duplicate: 3 good rows
    _catalog(tmp / "all_null.parquet", [None, None, None])
    pq.write_table(pa.table({"item_id": ["1", "2"], "title": [None, "  "]}, schema=pa.schema(
        [("item_id", pa.string()), ("title", pa.string())])), tmp / "no_text.parquet")
    for name, ids, columns in (("sids_null_id", [str(i) for i in range(7)] + [None], ("c1", "dedup")),
                               ("sids_dup", ["1", "1"], ("c1", "dedup")), ("sids_no_dedup", ["1", "2"], ("c1",))):
        codes = {c: pa.array([n % 8 for n in range(len(ids))], pa.int32()) for c in columns}
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()), **codes}).replace_schema_metadata(
            {b"rqsid.level_sizes": b"[8]"}), tmp / f"{name}.parquet")
    _interactions(tmp / "null_user.parquet", 40, 4, null_at=("user_id", 2))
    _interactions(tmp / "null_item.parquet", 40, 4, null_at=("item_id", 5))
    X = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    write_embeddings(tmp / "dup_emb.parquet", np.array([str(i % 10) for i in range(20)], dtype=object), X)
    return {"non_utf8": str(non_utf8)}


def _catalog(path: Path, ids: list) -> str:
    """A catalog parquet written as another tool would: nullable ids, one title per row."""
    titles = [f"steel water bottle {n}" for n in range(len(ids))]
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()), "title": titles}), path)
    return str(path)


# (name, argv builder, expected exit code, fragments that the error line (rc 2) or stdout (rc 0) must contain)
ERROR_CASES = [
    ("zero rows", lambda t, f: ["import", str(t / "zero.jsonl"), "--out", str(t / "o")], ["zero rows"]),
    ("no id column", lambda t, f: ["import", str(t / "no_id.parquet"), "--out", str(t / "o")], ["no item_id column"]),
    ("single item", lambda t, f: ["fit", "--embeddings", _embeddings(t / "one.parquet", 1), "--out", str(t / "o")] + TINY,
     ["1 items but codebook_size=8"]),
    ("fewer items than codes",
     lambda t, f: ["sids", "--embeddings", _embeddings(t / "five.parquet", 5), "--out", str(t / "o")] + TINY,
     ["5 items but codebook_size=8"]),
    ("NaN / inf embeddings",
     lambda t, f: ["fit", "--embeddings", _embeddings(t / "nan.parquet", 50, poison={(3, 2): np.nan, (7, 0): np.inf}),
                   "--out", str(t / "o")] + TINY, ["NaN or inf", "rows 3, 7"]),
    ("wrong embedding dimension", lambda t, f: ["sids", "--embeddings", _embeddings(t / "d8.parquet", 300, d=8),
                                                "--tokenizer", f["tokenizer"], "--out", str(t / "o")] + TINY,
     ["8 dims", "fit on 16"]),
    ("codebook_size=0", lambda t, f: ["fit", "--embeddings", _embeddings(t / "e.parquet", 50), "--out", str(t / "o"),
                                      "--set", "quantizer.codebook_size=0"],
     ["quantizer.codebook_size", "greater than or equal to 2"]),
    ("gini_threshold=1.5", lambda t, f: ["sids", "--embeddings", _embeddings(t / "e.parquet", 50), "--out", str(t / "o"),
                                         "--set", "prune.gini_threshold=1.5"],
     ["prune.gini_threshold", "less than or equal to 1"]),
    ("beam_size=5", lambda t, f: ["nightly", "--set", "generator.beam_size=5"],
     ["generator.beam_size", "greater than or equal to 10"]),
    ("unknown config key", lambda t, f: ["fit", "--embeddings", _embeddings(t / "e.parquet", 50), "--out", str(t / "o"),
                                         "--set", "nosuch=1"], ["nosuch"]),
    ("interactions with unknown items",
     lambda t, f: ["train", "--interactions", _interactions(t / "i.parquet", 40, 4, unknown_at=6),
                   "--sids", f["sids"], "--out", str(t / "g"), "--no-progress"],
     ["1 interactions name items without a SID", "rows [6]", "NO-SUCH-ITEM"]),
    ("users with one interaction", lambda t, f: ["train", "--interactions", _interactions(t / "i1.parquet", 40, 1),
                                                 "--sids", f["sids"], "--out", str(t / "g"), "--no-progress"],
     ["no user has 3 or more interactions", "40 users"]),
    ("SID file not JSON", lambda t, f: ["report", str(t / "bad.json")], ["not valid JSON"]),
    ("SID index with bad keys", lambda t, f: ["report", str(t / "bad_keys.index.json")], ["not 0-based int keys", "first"]),
    ("SID file not parquet", lambda t, f: ["report", str(t / "bad.parquet")], ["not a readable parquet file"]),
    ("SID file missing", lambda t, f: ["report", str(t / "missing.parquet")], ["not found"]),
    # catalogs are checked before anything is embedded or fitted (no embeddings.parquet is written)
    ("catalog: null + duplicate ids leave fewer items than codes",
     lambda t, f: ["sids", "--catalog", str(t / "null_ids.parquet"), "--out", str(t / "o")] + TINY,
     ["3 valid items after quarantining 3 rows", "codebook_size=8"]),
    ("catalog: every id null", lambda t, f: ["fit", "--catalog", str(t / "all_null.parquet"), "--out", str(t / "o")],
     ["no valid rows (3 quarantined: 3 missing item_id)"]),
    ("catalog: no text at all",
     lambda t, f: ["embed", "--catalog", str(t / "no_text.parquet"), "--out", str(t / "o" / "e.parquet")],
     ["no valid rows (2 quarantined: 2 no text)"]),
    ("catalog not parquet", lambda t, f: ["sids", "--catalog", str(t / "bad.parquet"), "--out", str(t / "o")],
     ["is not a readable parquet file"]),
    ("reindex: catalog with fewer items than codes",
     lambda t, f: ["reindex", "--catalog", str(t / "null_ids.parquet")] + TINY, ["3 valid items", "codebook_size=8"]),
    ("nightly: every id null", lambda t, f: ["nightly", "--catalog", str(t / "all_null.parquet")], ["no valid rows"]),
    ("drift: catalog not parquet", lambda t, f: ["drift", "--catalog", str(t / "bad.parquet")], ["not a readable parquet"]),
    ("retrain: no published index", lambda t, f: ["retrain", "--catalog-name", "nowhere"],
     ["catalog 'nowhere' has no published index"]),
    ("interactions: null user_id", lambda t, f: ["train", "--interactions", str(t / "null_user.parquet"),
                                                 "--sids", f["sids"], "--out", str(t / "g"), "--no-progress"],
     ["1 interactions have no user_id (rows [2])"]),
    ("interactions: null item_id", lambda t, f: ["train", "--interactions", str(t / "null_item.parquet"),
                                                 "--sids", f["sids"], "--out", str(t / "g"), "--no-progress"],
     ["1 interactions have no item_id (rows [5])"]),
    ("SIDs: null item_id", lambda t, f: ["report", str(t / "sids_null_id.parquet")], ["1 rows without item_id (rows [7])"]),
    ("SIDs: a column missing", lambda t, f: ["report", str(t / "sids_no_dedup.parquet")], ["lacks the columns ['dedup']"]),
    ("SIDs: duplicate item ids", lambda t, f: ["report", str(t / "sids_dup.parquet")], ["duplicate item ids ['1']"]),
    ("embeddings: duplicate item ids", lambda t, f: ["sids", "--embeddings", str(t / "dup_emb.parquet"),
                                                     "--out", str(t / "o")] + TINY, ["duplicate item_ids 0, 1, 2"]),
]


@pytest.mark.parametrize("name,argv,fragments", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_is_one_error_line(name, argv, fragments, tmp_path, fitted, capsys):
    _files(tmp_path, fitted)
    rc = main(argv(tmp_path, fitted))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "o" / "tokenizer").exists() and not (tmp_path / "g" / "model.pt").exists()  # nothing written
    assert not (tmp_path / "o" / "embeddings.parquet").exists() and not (tmp_path / "o" / "e.parquet").exists()
    assert not (ProjectHome.default().root / "server" / "prefect.json").exists()  # refused before any server started


def _import(tmp_path: Path, source: str, capsys) -> tuple[str, Path]:
    rc = main(["import", source, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0 and "Traceback" not in captured.err, captured.err
    return captured.out, tmp_path / "out"


def test_duplicate_ids_are_quarantined_and_counted(tmp_path, capsys):
    out, folder = _import(tmp_path, _jsonl(tmp_path / "dup.jsonl", GOOD_ROWS + [{"item_id": "1", "title": "again"}]), capsys)
    assert "catalog: 5 items" in out and "quarantined 1 rows (1 duplicate item_id)" in out
    quarantine = pq.read_table(folder / "quarantine.parquet")
    assert quarantine.column("item_id").to_pylist() == ["1"]
    assert read_catalog(folder / "catalog.parquet").num_rows + quarantine.num_rows == 6  # nothing lost


def test_empty_text_is_quarantined_and_counted(tmp_path, capsys):
    rows = GOOD_ROWS + [{"item_id": "blank", "title": "", "description": ""}]
    out, folder = _import(tmp_path, _jsonl(tmp_path / "empty.jsonl", rows), capsys)
    assert "quarantined 1 rows (1 no text)" in out
    assert pq.read_table(folder / "quarantine.parquet").column("item_id").to_pylist() == ["blank"]
    assert "blank" not in read_catalog(folder / "catalog.parquet").column("item_id").to_pylist()


def test_non_utf8_bytes_are_replaced_and_named(tmp_path, capsys):
    source = tmp_path / "non_utf8.jsonl"
    source.write_bytes(b'{"item_id": "1", "title": "fine"}\n{"item_id": "2", "title": "bad \xff\xfe bytes"}\n')
    out, folder = _import(tmp_path, str(source), capsys)
    assert "warning: 1 items had bytes that are not UTF-8 (replaced): 2" in out
    titles = dict(zip(*read_catalog(folder / "catalog.parquet").select(["item_id", "title"]).to_pydict().values(), strict=True))
    assert titles["1"] == "fine" and titles["2"].startswith("bad ") and titles["2"].endswith(" bytes")


def test_very_long_text_is_kept_and_truncated_for_embedding(tmp_path, capsys):
    rows = GOOD_ROWS + [{"item_id": "long", "title": "waterproof " * 200_000}]  # 2.2 MB of title
    out, folder = _import(tmp_path, _jsonl(tmp_path / "long.jsonl", rows), capsys)
    catalog = read_catalog(folder / "catalog.parquet")
    assert "catalog: 6 items" in out and "quarantined" not in out
    texts = item_text(catalog, max_chars=2000)
    assert max(len(t) for t in texts) <= 2000


def test_wrong_column_types_are_coerced_to_strings(tmp_path, capsys):
    pq.write_table(pa.table({"item_id": [1, 2, 3], "title": [1.5, 2.5, 3.5]}), tmp_path / "types.parquet")
    out, folder = _import(tmp_path, str(tmp_path / "types.parquet"), capsys)
    catalog = read_catalog(folder / "catalog.parquet")
    assert catalog.column("item_id").to_pylist() == ["1", "2", "3"]
    assert catalog.column("title").to_pylist() == ["1.5", "2.5", "3.5"]


def test_null_and_duplicate_ids_are_quarantined_before_embedding(tmp_path, capsys):
    """`rqsid sids --catalog` quarantines what `rqsid import` would, says so, and builds SIDs for the rest."""
    ids = [str(i) for i in range(10)] + [None, "3", None]
    rc = main(["sids", "--catalog", _catalog(tmp_path / "shop.parquet", ids), "--out", str(tmp_path / "o"),
               "--set", "quantizer.codebook_size=4", "--set", "quantizer.levels=2", "--set", "quantizer.epochs=2"])
    captured = capsys.readouterr()
    assert rc == 0 and "Traceback" not in captured.err, captured.err
    assert "quarantined 3 rows (1 duplicate item_id, 2 missing item_id)" in captured.out
    assert captured.out.index("quarantined 3 rows") < captured.out.index("embedding 10 items")
    assert pq.read_table(tmp_path / "o" / "quarantine.parquet").num_rows == 3
    assert sorted(pq.read_table(tmp_path / "o" / "sids.parquet").column("item_id").to_pylist()) == sorted(ids[:10])


def test_null_ids_in_imported_tables_are_quarantined(tmp_path, capsys):
    """`rqsid import` of a parquet catalog and interactions with null ids: quarantined and counted, nothing lost."""
    folder = tmp_path / "shop"
    folder.mkdir()
    _catalog(folder / "catalog.parquet", ["a", None, "b", "c"])
    pq.write_table(pa.table({"user_id": pa.array([None, "u1", "u1", "u1"], pa.string()),
                             "item_id": pa.array(["a", "a", None, "c"], pa.string()), "seq": [0, 0, 1, 2]}),
                   folder / "interactions.parquet")
    out, imported = _import(tmp_path, str(folder), capsys)
    assert "quarantined 1 rows (1 missing item_id)" in out
    assert "quarantined 2 rows (1 missing item_id, 1 missing user_id)" in out
    assert read_catalog(imported / "catalog.parquet").num_rows == 3


def test_single_item_catalog_imports(tmp_path, capsys):
    out, folder = _import(tmp_path, _jsonl(tmp_path / "one.jsonl", GOOD_ROWS[:1]), capsys)
    assert "catalog: 1 items" in out and read_catalog(folder / "catalog.parquet").num_rows == 1


# ---------------------------------------------------------------- unreachable services: a clear error in bounded time

SERVICE_CASES = [
    ("orchestration.prefect_api_url=http://127.0.0.1:{port}/api", "orchestration.prefect_api_url"),
    ("orchestration.mlflow_tracking_uri=http://127.0.0.1:{port}", "orchestration.mlflow_tracking_uri"),
    ("orchestration.dask_address=tcp://127.0.0.1:{port}", "orchestration.dask_address"),
]


@pytest.mark.parametrize("setting,name", SERVICE_CASES, ids=[c[1] for c in SERVICE_CASES])
def test_refused_service_is_one_error_line(setting, name):
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # a real CLI process: Prefect's log handlers must not bind to this test's captured stderr
    done = run_process("reindex", "--set", setting.format(port=port), timeout=120)
    rc, err = done.returncode, done.stderr
    assert rc == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: {name}=") and ("does not answer" in err or "no scheduler answers" in err)


@pytest.mark.parametrize("setting,name", SERVICE_CASES[:2], ids=[c[1] for c in SERVICE_CASES[:2]])
def test_silent_service_times_out(setting, name):
    """A server that accepts the connection and never answers: refused after the bound, not a hang."""
    import socket
    import time

    from rqsid import RqsidError
    from rqsid.config import load_config, parse_override
    from tasks.services import preflight

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        config = load_config(None, dict([parse_override(setting.format(port=silent.getsockname()[1]))]))
        started = time.perf_counter()
        with pytest.raises(RqsidError, match=rf"{name}=.*does not answer.*1 s limit"):
            preflight(config, timeout_s=1.0)
        assert time.perf_counter() - started < 5
