"""The `rqsid` command as a user runs it: the command registry, `--help` without heavy imports, the library
commands (report, prune, fit, sids) on synthetic SIDs and a small synthetic catalog, one-line user errors,
and the one way every command resolves its config."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from cli_runner import REPO, rqsid, run_process
from rqsid.metrics import table_report
from rqsid.sids import read_sids, write_sids
from rqsid.trie import SidTrie
from synthetic_tables import shop, sid_table

COMMANDS = {"import", "demo-catalog", "embed", "fit", "sids", "report", "prune", "train", "evaluate", "recommend", "nightly",
            "reindex", "retrain", "drift", "serve", "server", "ui", "study"}
HEAVY = ("torch", "numpy", "pyarrow", "prefect", "mlflow", "great_expectations", "dask", "distributed", "pydantic")


def test_every_command_is_registered():
    from cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS


def test_help_imports_nothing_heavy():
    """`rqsid --help` (and building the parser) imports none of the libraries the commands run on."""
    code = ("import sys, contextlib, io\nfrom cli.main import build_parser\nbuild_parser()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert run_process("--help").stdout.count("\n    ") >= len(COMMANDS)


def test_a_command_module_that_fails_to_import_fails_the_command(tmp_path):
    """No command goes silently missing: a broken command module is an ImportError of `rqsid` itself."""
    (tmp_path / "cli").mkdir()
    for name in ("__init__", "data", "sids", "generator", "recommend", "orchestration"):
        (tmp_path / "cli" / f"{name}.py").write_text((REPO / "cli" / f"{name}.py").read_text())
    (tmp_path / "cli" / "main.py").write_text((REPO / "cli" / "main.py").read_text())
    (tmp_path / "cli" / "study.py").write_text("import no_such_dependency\n")
    done = subprocess.run([sys.executable, "-c", "import cli.main"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode != 0 and "No module named 'no_such_dependency'" in done.stderr


@pytest.fixture(scope="module")
def skewed_sids(tmp_path_factory):
    """A 4-level SID table with a layer-2 hourglass, as a SID parquet file."""
    return write_sids(tmp_path_factory.mktemp("sids") / "skewed.parquet", sid_table(n=4000, exponents=(0.6, 1.2, 0.4, 0.3)))


@pytest.mark.parametrize("how,method", [(["--k", "12"], "top_k"), (["--drop-layer"], "drop_layer"),
                                        (["--auto", "--set", "prune.max_collision_rate=0.5"], "top_k")])
def test_prune_writes_a_decodable_pruned_table(tmp_path, skewed_sids, how, method):
    out = tmp_path / "pruned.parquet"
    result = rqsid("prune", skewed_sids, "--out", out, *how)
    assert "before" in result.stdout and "after" in result.stdout
    table = read_sids(out)
    assert table.pruning["method"] == method and len(table) == 4000
    if how[0] == "--k":
        assert table.pruning["k"] == 12 and len(table.removed_codes()[2]) == 12
    tokens = table.token_matrix()
    assert np.array_equal(SidTrie.build(tokens, table.vocab_size).lookup(tokens), np.arange(len(table)))


def test_user_errors_are_one_line(tmp_path, skewed_sids):
    result = run_process("prune", skewed_sids, "--out", tmp_path / "x.parquet", "--level", "7")
    assert result.returncode == 2 and result.stderr.strip() == "error: level 7 does not exist; the SIDs have levels 1..4"
    result = rqsid("report", tmp_path / "missing.parquet", ok=False)
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    from rqsid.catalog import write_catalog

    catalog, _ = shop()
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
    # 8 codes cannot tell 200 items apart in 3 levels: the code space grows until collisions pass the gate's bound
    assert "fitting rqvae: 8 codes per level on 200 items" in result.stdout and "reconstruction error" in result.stdout
    grown = re.search(r"code space: (\d) levels x 8 codes; 3 levels collided for (0\.\d+)", result.stdout)
    assert grown and int(grown.group(1)) > 3 and float(grown.group(2)) > 0.2
    assert (tmp_path / "tokenizer").is_dir() and not (tmp_path / "embeddings.parquet").exists()


def test_side_by_side_reports_tell_equal_file_names_apart(tmp_path, skewed_sids):
    for folder in ("shop-a", "shop-b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sids.parquet").write_bytes(skewed_sids.read_bytes())
    header = rqsid("report", tmp_path / "shop-a" / "sids.parquet", tmp_path / "shop-b" / "sids.parquet").stdout.splitlines()[0]
    assert header.split() == ["metric", "shop-a/sids.parquet", "shop-b/sids.parquet"]
    gini = f"{table_report(read_sids(skewed_sids))['layers'][1]['gini']:.3f}"
    assert rqsid("report", skewed_sids, "--json").stdout.count('"gini"') == 4 and gini in rqsid("report", skewed_sids).stdout


def test_every_command_resolves_its_config_the_same_way(tmp_path):
    """Profile < config file < --set < the command's own flags, through cli.options.config_from."""
    import argparse

    from cli.options import add_config_flags, config_from

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    (tmp_path / "shop.toml").write_text("[generator]\nepochs = 7\nbeam_size = 15\n")
    args = parser.parse_args(["--config", str(tmp_path / "shop.toml"), "--set", "generator.beam_size=18"])
    demo = config_from(args, profile="demo", extra={"embed.batch_size": 16, "embed.max_seq_length": None})
    assert demo.generator.epochs == 7 and demo.generator.beam_size == 18  # the file, then --set, win over the profile
    assert demo.quantizer.epochs == 60 and demo.generator.valid_users == 1000  # the profile fills what they left open
    assert demo.embed.batch_size == 16 and demo.embed.max_seq_length == 128  # the command's flags, where given
    plain = config_from(args)
    assert plain.quantizer.epochs == type(plain.quantizer)().epochs and plain.generator.epochs == 7
