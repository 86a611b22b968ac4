"""The cold-start benchmark end to end at a tiny budget, as a user runs it: a synthetic shop with its
histories, random item vectors, a two-level residual k-means and a one-epoch generator."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from cli_runner import REPO
from rqsid.embed import write_embeddings
from synthetic_tables import shop

TINY = ["quantizer.method=rkmeans", "quantizer.levels=2", "quantizer.codebook_size=8", "generator.d_model=16",
        "generator.n_heads=2", "generator.n_layers=1", "generator.epochs=1", "generator.valid_users=50",
        "generator.beam_size=10", "generator.item_text=true"]


def test_cold_start_benchmark_runs_end_to_end_and_scores_only_removed_targets(tmp_path):
    catalog, interactions = shop(n_items=300, seed=4)
    data = tmp_path / "shop"
    data.mkdir()
    pq.write_table(catalog, data / "catalog.parquet")
    pq.write_table(interactions, data / "interactions.parquet")
    ids = np.asarray(catalog.column("item_id").to_pylist(), dtype=object)
    write_embeddings(tmp_path / "emb.parquet", ids, np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32))
    overrides = [arg for text in TINY for arg in ("--set", text)]
    command = [sys.executable, "benchmarks/cold_start.py", "--dataset", data, "--embeddings", tmp_path / "emb.parquet",
               "--minutes", "0.2", "--holdout", "0.1", "--warm-users", "100", "--tag", "_tiny", "--out", tmp_path, *overrides]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "cold_start_tiny.json").read_text())
    run = result["run"]
    assert run["removed_items"] == 30 and run["train_interactions"] < run["interactions"]
    assert run["cold_cases"] > 0 and set(run["cold"]) == {"generator", "content (text embeddings)", "popularity"}
    for metrics in run["cold"].values():
        assert metrics["n"] == run["cold_cases"] and 0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1
    assert run["cold"]["popularity"]["recall@10"] == 0  # removed items have no training interactions to be popular with
    assert run["config"]["generator"]["item_text"] is True
    assert "Cold cases" in (tmp_path / "cold_start_tiny.md").read_text()
