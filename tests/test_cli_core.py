"""The core CLI commands, run as a user runs them: report, prune, fit, sids (real data, small subsets)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from flows.cli import main
from rqsid.metrics import table_report
from rqsid.sids import collision_rate, load_reference_index, read_sids
from rqsid.trie import SidTrie


def run_process(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process (as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def rqsid(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """The same entry point in this process (saves a torch import per call); stdout/stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    result = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if ok:
        assert code == 0, result.stderr[-3000:]
    return result


def test_report_json_on_the_beauty_reference(beauty_dir):
    path = beauty_dir / "reference-sids" / "rqvae.index.json"
    result = run_process("report", path, "--json", "--id-offset", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["n_items"] == 12101 and len(report["layers"]) == 4
    for layer in report["layers"]:
        for key in ("entropy_bits", "entropy_norm", "gini", "std", "utilisation", "max_share"):
            assert isinstance(layer[key], float)
    table = load_reference_index(path, id_offset=1)
    assert report["collision_rate"] == pytest.approx(collision_rate(table.codes))
    assert report["layers"][1]["counts"] == np.bincount(table.codes[:, 1], minlength=256).tolist()


def test_report_prints_tables_side_by_side(scientific_dir, beauty_dir):
    refs = scientific_dir / "reference-sids"
    text = rqsid("report", refs / "rqvae.index.json", refs / "rkmeans.index.json",
                 beauty_dir / "reference-sids" / "rqvae.index.json").stdout
    header = text.splitlines()[0].split()
    # equal file names are told apart by their dataset folder
    assert header == ["metric", "amazon-scientific-2018/rqvae.index.json", "rkmeans.index.json",
                      "amazon-beauty-2014/rqvae.index.json"]
    gini_row = next(line for line in text.splitlines() if line.startswith("L2 gini")).split()
    paths = [refs / "rqvae.index.json", refs / "rkmeans.index.json", beauty_dir / "reference-sids" / "rqvae.index.json"]
    assert gini_row[2:] == [f"{table_report(load_reference_index(p))['layers'][1]['gini']:.3f}" for p in paths]


@pytest.mark.parametrize("how,method", [(["--k", "12"], "top_k"), (["--drop-layer"], "drop_layer"),
                                        (["--auto", "--set", "prune.max_collision_rate=0.5"], "top_k")])
def test_prune_writes_a_decodable_pruned_table(tmp_path, scientific_dir, how, method):
    out = tmp_path / "pruned.parquet"
    result = rqsid("prune", scientific_dir / "reference-sids" / "rkmeans.index.json", "--out", out, *how)
    assert "before" in result.stdout and "after" in result.stdout
    table = read_sids(out)
    assert table.pruning["method"] == method and len(table) == 4344
    if how[0] == "--k":
        assert table.pruning["k"] == 12 and len(table.removed_codes()[2]) == 12
    tokens = table.token_matrix()
    assert np.array_equal(SidTrie.build(tokens, table.vocab_size).lookup(tokens), np.arange(len(table)))


def test_user_errors_are_one_line(tmp_path, scientific_dir):
    result = run_process("prune", scientific_dir / "reference-sids" / "rqvae.index.json", "--out",
                         tmp_path / "x.parquet", "--level", "7")
    assert result.returncode == 2 and result.stderr.strip() == "error: level 7 does not exist; the SIDs have levels 1..4"
    result = rqsid("report", tmp_path / "missing.parquet", ok=False)
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory, scientific_dir):
    from rqsid.catalog import write_catalog
    from rqsid.importers import import_dataset

    catalog, _ = import_dataset(scientific_dir, kind="scientific")
    path = tmp_path_factory.mktemp("catalog") / "catalog.parquet"
    write_catalog(catalog.slice(0, 200), path)
    return path


SMALL = ("--set", "quantizer.codebook_size=16", "--set", "quantizer.kmeans_iters=10")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, small_catalog):
    """One real end-to-end run (embedding included), shared by the tests below to keep them fast."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    result = rqsid("sids", "--catalog", small_catalog, "--out", out, "--method", "rkmeans", *SMALL,
                   "--set", "embed.max_seq_length=48")  # short texts: the test is about the pipeline
    return out, result.stdout


def test_sids_pipeline_writes_every_artifact(pipeline_run):
    out, stdout = pipeline_run
    for name in ("embeddings.parquet", "tokenizer", "sids.parquet", "sids_pruned.parquet", "report.json",
                 "report_pruned.json", "prune_trace.json"):
        assert (out / name).exists(), name
    assert "embedding 200 items" in stdout and "before" in stdout and "after" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["n_items"] == 200 and report["level_sizes"] == [16, 16, 16]
    pruned = read_sids(out / "sids_pruned.parquet")
    trace = json.loads((out / "prune_trace.json").read_text())
    assert len(trace) == 17 and (pruned.pruning or {"k": 0})["k"] in [t["k"] for t in trace]
    assert json.loads((out / "report_pruned.json").read_text())["pruning"] == pruned.pruning
    tokens = pruned.token_matrix()
    assert np.array_equal(SidTrie.build(tokens, pruned.vocab_size).lookup(tokens), np.arange(200))


def test_sids_reuses_a_saved_tokenizer(tmp_path, pipeline_run):
    out, _ = pipeline_run
    rqsid("sids", "--embeddings", out / "embeddings.parquet", "--tokenizer", out / "tokenizer", "--out", tmp_path, *SMALL)
    assert np.array_equal(read_sids(tmp_path / "sids.parquet").codes, read_sids(out / "sids.parquet").codes)
    assert not (tmp_path / "tokenizer").exists() and not (tmp_path / "embeddings.parquet").exists()


def test_fit_rqvae_from_embeddings(tmp_path, pipeline_run):
    out, _ = pipeline_run
    result = rqsid("fit", "--embeddings", out / "embeddings.parquet", "--out", tmp_path, "--method", "rqvae",
                   "--set", "quantizer.epochs=2", "--set", "quantizer.codebook_size=8", "--set", "quantizer.warmup_epochs=1")
    assert "fitting rqvae: 3 levels x 8 codes on 200 items" in result.stdout and "reconstruction error" in result.stdout
    assert (tmp_path / "tokenizer").is_dir() and not (tmp_path / "embeddings.parquet").exists()
