"""The hourglass study: synthetic inputs, sweeps over seeds, pruning variants, the statistics behind the
verdicts, the report writer, and one tiny end-to-end flow run (real Prefect test server, sqlite MLflow,
real embeddings of 200 Scientific items, real tokenizers and generator)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rqsid import RqsidError
from rqsid.config import PruneConfig, QuantizerConfig
from rqsid.study import (
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    GeneratorRun,
    SyntheticSpec,
    align_embeddings,
    finding_concentration,
    finding_head_tail,
    finding_pruning,
    finding_uniformity,
    findings,
    generator_comparisons,
    group_difference,
    hourglass_gap,
    layer_rows,
    paired_difference,
    prune_variants,
    quantize_sweep,
    render_report,
    summarise,
    variant_key,
    write_report,
    zipf_mixture,
    zipf_sizes,
)

SMALL_RQ = QuantizerConfig(codebook_size=16, levels=3, kmeans_iters=20, threads=1, epochs=6, warmup_epochs=2,
                           hidden_dims=[32], latent_dim=8)
VERDICTS = {REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED}


@pytest.fixture(scope="module")
def sweep():
    """Residual k-means at K=16 on uniform, Gaussian and Zipf-skewed inputs (1500 x 32), two seeds."""
    spec = SyntheticSpec(clusters=16)
    fits = quantize_sweep(lambda seed: spec.make(1500, 32, seed), ["rkmeans"], [0, 1], SMALL_RQ)
    rows = [row for fit in fits for row in layer_rows(fit)]
    return fits, rows, summarise(rows)


def _gini(summary, source, level):
    return next(r for r in summary if r["source"] == source and r["level"] == level)["gini_mean"]


def test_zipf_sizes_and_mixture():
    sizes = zipf_sizes(1000, 10, 1.0)
    assert sizes.sum() == 1000 and (np.diff(sizes) <= 0).all()
    assert sizes[0] / sizes[1] == pytest.approx(2.0, rel=0.05)  # rank 1 vs rank 2 under s = 1
    X = zipf_mixture(500, 24, seed=3, clusters=8)
    assert X.shape == (500, 24) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(X, zipf_mixture(500, 24, seed=3, clusters=8))  # deterministic per seed
    with pytest.raises(RqsidError, match="clusters"):
        zipf_sizes(5, 10, 1.0)


def test_skewed_inputs_concentrate_residual_kmeans_more_than_uniform(sweep):
    _, _, summary = sweep
    for level in (1, 2):
        assert _gini(summary, "skewed", level) > _gini(summary, "uniform", level) + 0.05
    # uniform input: residual k-means spreads layer 1 almost evenly
    assert _gini(summary, "uniform", 1) < 0.15


def test_summary_is_mean_and_std_over_seeds(sweep):
    _, rows, summary = sweep
    values = [r["gini"] for r in rows if r["source"] == "skewed" and r["level"] == 2]
    row = next(r for r in summary if r["source"] == "skewed" and r["level"] == 2)
    assert row["n"] == 2 == len(values)
    assert row["gini_mean"] == pytest.approx(np.mean(values)) and row["gini_std"] == pytest.approx(np.std(values))
    assert hourglass_gap([0.2, 0.5, 0.3]) == pytest.approx(0.2)
    assert hourglass_gap([0.2, None, 0.3]) is None


def test_statistics_of_differences():
    rng = np.random.default_rng(0)
    a, b = (rng.random(400) < 0.3).astype(float), (rng.random(400) < 0.2).astype(float)
    paired = paired_difference(a, b)
    assert paired["diff"] == pytest.approx(a.mean() - b.mean())
    assert paired["se"] == pytest.approx(np.std(a - b, ddof=1) / 20)
    head = np.arange(400) < 100
    split = group_difference(a, head)
    assert split["head"] == pytest.approx(a[:100].mean()) and split["tail"] == pytest.approx(a[100:].mean())
    assert split["se"] == pytest.approx(math.sqrt(a[:100].var(ddof=1) / 100 + a[100:].var(ddof=1) / 300))


def test_prune_variants_on_real_sids(scientific_dir):
    from rqsid.importers import import_scientific
    from rqsid.prune import choose_k
    from rqsid.study import fit_table

    catalog, _ = import_scientific(scientific_dir)
    ids = np.asarray(catalog.column("item_id").to_pylist()[:800], dtype=object)
    X = zipf_mixture(len(ids), 16, seed=0, clusters=16)  # stand-in vectors: the variants depend on codes only
    unpruned, _ = fit_table(ids, X, SMALL_RQ, "rkmeans", 0)
    prune = PruneConfig(gini_threshold=0.2, max_collision_rate=0.9)
    variants = prune_variants(unpruned, [2, 4], prune)
    auto = choose_k(unpruned, 0.2, 0.9)
    assert list(variants)[:4] == ["baseline", "drop layer 2", "top-2", "top-4"]
    assert list(variants)[4].startswith(f"auto top-K (K={auto.k}")
    assert (variants["drop layer 2"].codes[:, 1] == -1).all()
    assert variants["top-4"].pruning["k"] == 4 and variant_key(variants["top-4"]) != variant_key(unpruned)
    with pytest.raises(RqsidError, match="top-K value 16"):
        prune_variants(unpruned, [16], prune)


def test_align_embeddings_orders_rows_and_names_missing_items():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = align_embeddings(np.array(["b", "d"], dtype=object), np.array(["a", "b", "c", "d"], dtype=object), X)
    np.testing.assert_array_equal(out, X[[1, 3]])
    with pytest.raises(RqsidError, match="lack 1 catalog items.*'z'"):
        align_embeddings(np.array(["b", "z"], dtype=object), np.array(["a", "b"], dtype=object), X[:2])


# ---------------------------------------------------------------- verdicts come from the numbers


def _runs(hit_rates: dict[str, float], n: int = 2000, head_boost: float = 0.0) -> list[GeneratorRun]:
    """Generator outcomes with given hit rates (random users, head users get `head_boost` more)."""
    rng = np.random.default_rng(1)
    is_head = rng.random(n) < 0.5
    draw = rng.random(n)
    runs = []
    for name, rate in hit_rates.items():
        hits = (draw < rate + head_boost * is_head).astype(float)
        runs.append(GeneratorRun(name, 0, {}, {"recall@10": hits, "ndcg@10": hits / 2}, is_head))
    return runs


def _rows(source: str, method: str, ginis_per_seed: list[list[float]]) -> list[dict]:
    """Layer rows as a sweep writes them, with the given Gini per seed and level."""
    return [{"source": source, "method": method, "seed": seed, "level": level, "gini": g, "entropy_bits": 3.0,
             "entropy_norm": 0.9, "std": 10.0, "utilisation": 1.0, "max_share": 0.1, "collision_rate": 0.1}
            for seed, ginis in enumerate(ginis_per_seed) for level, g in enumerate(ginis, 1)]


def test_verdicts_follow_the_numbers():
    def concentration(ginis):
        rows = _rows("real", "rqvae", ginis)
        return finding_concentration({"tokenizers": {"rows": rows, "summary": summarise(rows)}}).verdict

    assert concentration([[0.2, 0.6, 0.3], [0.25, 0.55, 0.3]]) == REPRODUCED
    assert concentration([[0.3, 0.35, 0.3], [0.3, 0.32, 0.3]]) == PARTLY  # most concentrated in every seed, under the margin
    assert concentration([[0.3, 0.2, 0.3], [0.3, 0.25, 0.3]]) == NOT_REPRODUCED

    def uniformity(uniform, skewed):
        rows = _rows("uniform", "rqvae", uniform) + _rows("skewed", "rqvae", skewed)
        return finding_uniformity({"uniformity": {"summary": summarise(rows)}}).verdict

    flat = [[0.1, 0.1, 0.1], [0.12, 0.1, 0.1]]
    assert uniformity(flat, [[0.3, 0.6, 0.3], [0.3, 0.62, 0.3]]) == REPRODUCED
    assert uniformity(flat, [[0.3, 0.45, 0.4], [0.3, 0.45, 0.4]]) == PARTLY  # layer 2 rises most, no hourglass
    assert uniformity(flat, [[0.5, 0.3, 0.1], [0.5, 0.3, 0.1]]) == NOT_REPRODUCED
    assert uniformity([[0.1, 0.5, 0.1]] * 2, [[0.3, 0.7, 0.3]] * 2) == NOT_REPRODUCED  # uniform shows it too
    assert finding_uniformity({}).verdict == NOT_MEASURED

    helps = _runs({"baseline": 0.05, "drop layer 2": 0.08, "top-4": 0.09, "auto top-K (K=4)": 0.11}, head_boost=0.06)
    hurts = _runs({"baseline": 0.08, "drop layer 2": 0.05, "auto top-K (K=4)": 0.05})
    gen_helps = {"generator": {"variants": [], "comparisons": generator_comparisons(helps)}}
    gen_hurts = {"generator": {"variants": [], "comparisons": generator_comparisons(hurts)}}
    assert finding_pruning(gen_helps).verdict == REPRODUCED
    assert finding_pruning(gen_hurts).verdict == NOT_REPRODUCED and "significantly hurts" in finding_pruning(gen_hurts).reason
    assert finding_head_tail(gen_helps).verdict == REPRODUCED
    assert finding_head_tail(gen_hurts).verdict == NOT_REPRODUCED


def test_report_has_the_four_findings_with_computed_verdicts(tmp_path, sweep):
    _, rows, _ = sweep
    real = [dict(r, source="real", method="rqvae") for r in rows if r["source"] == "skewed"]
    results = {
        "command": "rqsid study --dataset x", "made": "now", "machine": "test",
        "dataset": {"name": "x", "n_items": 1500, "dim": 32, "n_users": 0},
        "settings": {"seeds": 2},
        "tokenizers": {"rows": real, "summary": summarise(real)},
        "uniformity": {"rows": rows + real, "summary": summarise([dict(r, method="rqvae") for r in rows] + real),
                       "inputs": SyntheticSpec().describe()},
    }
    path = write_report(results, tmp_path, {"tokenizers_x": "plots/x.png"})
    text = path.read_text()
    expected = findings(results)
    assert [f.number for f in expected] == [1, 2, 3, 4]
    for f in expected:
        assert f.verdict in VERDICTS
        assert f"| {f.number} | {f.claim} | **{f.verdict}** |" in text
    assert [f.verdict for f in expected][2:] == [NOT_MEASURED, NOT_MEASURED]  # no generator in these results
    assert "![tokenizers_x](plots/x.png)" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [f["verdict"] for f in saved["findings"]] == [f.verdict for f in expected]
    # the same numbers render the same report: nothing in it is left to chance
    assert render_report(results, {"tokenizers_x": "plots/x.png"}) == text


# ---------------------------------------------------------------- the flow, end to end


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, scientific_dir):
    """The 200 most interacted Scientific items and the users with >= 3 of them (first 500 users)."""
    from rqsid.catalog import write_catalog, write_interactions
    from rqsid.importers import import_scientific

    catalog, inter = import_scientific(scientific_dir)
    counts = pc.value_counts(inter.column("item_id")).to_pylist()
    top = pa.array([c["values"] for c in sorted(counts, key=lambda c: -c["counts"])[:200]])
    catalog = catalog.filter(pc.is_in(catalog.column("item_id"), top))
    df = inter.filter(pc.is_in(inter.column("item_id"), top)).to_pandas().sort_values(["user_id", "seq"])
    df["seq"] = df.groupby("user_id").cumcount().astype("int32")
    df = df[df.groupby("user_id")["item_id"].transform("size") >= 3]
    df = df[df["user_id"].isin(df["user_id"].drop_duplicates().iloc[:500])]
    folder = tmp_path_factory.mktemp("tiny-sci")
    write_catalog(catalog, folder / "catalog.parquet")
    write_interactions(pa.Table.from_pandas(df[inter.column_names], schema=inter.schema, preserve_index=False),
                       folder / "interactions.parquet")
    return folder


TINY_CONFIG = {
    "embed": {"max_chars": 200, "max_seq_length": 32},  # the real text model on short texts: fast
    "quantizer": {"codebook_size": 16, "epochs": 4, "warmup_epochs": 1, "hidden_dims": [32], "latent_dim": 8,
                  "kmeans_iters": 10},
    "generator": {"epochs": 1, "d_model": 16, "n_heads": 2, "n_layers": 1, "valid_users": 100, "beam_size": 10,
                  "eval_every": 1, "warmup_steps": 5},
    "prune": {"max_collision_rate": 0.8},
}


def test_study_flow_end_to_end(tmp_path, tiny_dataset):
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.study import hourglass_study
    from tasks.tracking import Tracker

    out = tmp_path / "report"
    with prefect_test_harness(server_startup_timeout=150):
        result = hourglass_study(dataset=str(tiny_dataset), quick=True, seeds=2, out=str(out), config=TINY_CONFIG,
                                 ks=[4], command="rqsid study --dataset tiny --quick")
    text = (out / "report.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert [f["number"] for f in result["findings"]] == [1, 2, 3, 4]
    assert all(f["verdict"] in VERDICTS for f in result["findings"])
    assert result["findings"][2]["verdict"] != NOT_MEASURED  # the generator ran: head/tail measured
    assert saved["findings"] == result["findings"] and "`rqsid study --dataset tiny --quick`" in text
    for plot in ("tokenizers_side_by_side", "uniformity_rqvae", "uniformity_rkmeans", "pruning_variants"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 0 and f"plots/{plot}.png" in text
    # the embeddings were computed by the real text model (no --embeddings given) and cached in the home
    assert saved["dataset"]["dim"] == 384 and "cache" in saved["dataset"]["embeddings"]
    variants = {v["variant"] for v in saved["generator"]["variants"]}
    assert {"baseline", "drop layer 2", "top-4"} <= variants and any(v.startswith("auto top-K") for v in variants)

    client: MlflowClient = Tracker().client
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = {r.info.run_name: r for r in children}
    assert set(stages) == {"data", "tokenizers", "uniformity", "generator", "report"}
    assert 0 <= stages["tokenizers"].data.metrics["real.rqvae.l2.gini_mean"] <= 1
    assert "skewed.rkmeans.s1.l1.gini" in stages["uniformity"].data.metrics
    assert parent.data.tags["prefect.flow_run_id"]
    logged = {a.path for a in client.list_artifacts(stages["report"].info.run_id)}
    assert {"report.md", "results.json"} <= logged


def test_study_command_line_and_config():
    import argparse
    import shlex

    from flows.study_cli import command_line, register, study_config

    parser = argparse.ArgumentParser(prog="rqsid")
    register(parser.add_subparsers(dest="command"))
    argv = ["study", "--dataset", "scientific", "--quick", "--ks", "8,32", "--generator-minutes", "2",
            "--set", "quantizer.levels=4"]
    args = parser.parse_args(argv)
    line = command_line(args)
    assert parser.parse_args(shlex.split(line)[1:]) == args  # the recorded command reproduces the run
    config = study_config(args)
    # only what the caller set goes to the flow (the mode profile fills the rest)
    assert config.model_dump(mode="json", exclude_unset=True) == {"quantizer": {"levels": 4},
                                                                  "generator": {"max_train_minutes": 2.0}}
    with pytest.raises(RqsidError, match="quantizer.levels"):
        study_config(parser.parse_args(["study", "--set", "quantizer.levels=0"]))
