"""The hourglass study: synthetic inputs, sweeps over seeds, pruning variants, the statistics behind the
verdicts, the report writer (it rewrites the committed study reports byte for byte), and one tiny
end-to-end flow run (the session's Prefect server, sqlite MLflow, real text-model embeddings of a
200-item synthetic shop, real tokenizers and generator). Resuming after a crash: test_reliability_crash.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rqsid import RqsidError
from rqsid.config import PruneConfig, QuantizerConfig, load_config
from rqsid.study import (
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    DatasetInfo,
    GeneratorResults,
    GeneratorRun,
    StudyResults,
    StudySettings,
    SyntheticSpec,
    TokenizerResults,
    UniformityResults,
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
    rerender_report,
    summarise,
    variant_key,
    write_report,
    zipf_mixture,
    zipf_sizes,
)

# Plain Lloyd k-means (no balanced iterations): its layer 1 takes the Zipf input's skew, the known shape the
# report's verdict logic is checked against (the balanced default flattens it; the study measures that)
SMALL_RQ = QuantizerConfig(codebook_size=16, levels=3, kmeans_iters=20, threads=1, epochs=6, warmup_epochs=2,
                           hidden_dims=[32], latent_dim=8, kmeans_balance=0.0)
COMMITTED_STUDIES = sorted((Path(__file__).resolve().parent.parent / "benchmarks/results/hourglass").glob("*/results.json"))


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


def test_prune_variants_of_fitted_sids():
    from rqsid.prune import choose_k
    from rqsid.study import fit_table

    ids = np.array([f"item-{i}" for i in range(800)], dtype=object)
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
        return finding_concentration(TokenizerResults(rows=rows, summary=summarise(rows))).verdict

    assert concentration([[0.2, 0.6, 0.3], [0.25, 0.55, 0.3]]) == REPRODUCED
    assert concentration([[0.3, 0.35, 0.3], [0.3, 0.32, 0.3]]) == PARTLY  # most concentrated in every seed, under the margin
    assert concentration([[0.3, 0.2, 0.3], [0.3, 0.25, 0.3]]) == NOT_REPRODUCED

    def uniformity(uniform, skewed):
        rows = _rows("uniform", "rqvae", uniform) + _rows("skewed", "rqvae", skewed)
        return finding_uniformity(UniformityResults(rows=rows, summary=summarise(rows))).verdict

    flat = [[0.1, 0.1, 0.1], [0.12, 0.1, 0.1]]
    assert uniformity(flat, [[0.3, 0.6, 0.3], [0.3, 0.62, 0.3]]) == REPRODUCED
    assert uniformity(flat, [[0.3, 0.45, 0.4], [0.3, 0.45, 0.4]]) == PARTLY  # layer 2 rises most, no hourglass
    assert uniformity(flat, [[0.5, 0.3, 0.1], [0.5, 0.3, 0.1]]) == NOT_REPRODUCED
    assert uniformity([[0.1, 0.5, 0.1]] * 2, [[0.3, 0.7, 0.3]] * 2) == NOT_REPRODUCED  # uniform shows it too
    assert finding_uniformity(None).verdict == NOT_MEASURED

    helps = _runs({"baseline": 0.05, "drop layer 2": 0.08, "top-4": 0.09, "auto top-K (K=4)": 0.11}, head_boost=0.06)
    hurts = _runs({"baseline": 0.08, "drop layer 2": 0.05, "auto top-K (K=4)": 0.05})
    gen_helps = GeneratorResults(variants=[], comparisons=generator_comparisons(helps))
    gen_hurts = GeneratorResults(variants=[], comparisons=generator_comparisons(hurts))
    assert finding_pruning(gen_helps).verdict == REPRODUCED
    assert finding_pruning(gen_hurts).verdict == NOT_REPRODUCED and "significantly hurts" in finding_pruning(gen_hurts).reason
    assert finding_head_tail(gen_helps).verdict == REPRODUCED
    assert finding_head_tail(gen_hurts).verdict == NOT_REPRODUCED


def test_report_has_the_four_findings_with_computed_verdicts(tmp_path, sweep):
    _, rows, summary = sweep
    real = [dict(r, source="real", method="rqvae") for r in rows if r["source"] == "skewed"]
    settings = StudySettings(quick=True, seeds=2, generator_seeds=1, methods=["rqvae"], ks=[2], quantizer={"levels": 3},
                             generator_minutes=1.0, prune={"gini_threshold": 0.4})
    results = StudyResults(
        command="rqsid study --dataset x", made="now", machine="test", settings=settings,
        dataset=DatasetInfo(name="x", n_items=1500, dim=32),
        tokenizers=TokenizerResults(rows=real, summary=summarise(real)),
        uniformity=UniformityResults(rows=rows + real, summary=summarise([dict(r, method="rqvae") for r in rows] + real),
                                     inputs=SyntheticSpec().describe()),
    )
    path = write_report(results, tmp_path, {"tokenizers_x": "plots/x.png"})
    text = path.read_text()
    expected = findings(results)
    # residual k-means puts the skew of the Zipf input into layer 1 (Gini falls layer by layer): no hourglass
    skewed = [_gini(summary, "skewed", level) for level in (1, 2, 3)]
    assert skewed == sorted(skewed, reverse=True)
    assert [f.verdict for f in expected] == [NOT_REPRODUCED, NOT_REPRODUCED, NOT_MEASURED, NOT_MEASURED]
    for f in expected:
        assert f"| {f.number} | {f.claim} | **{f.verdict}** |" in text
    assert "![tokenizers_x](plots/x.png)" in text and "0 interactions (generator not run)" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [f["verdict"] for f in saved["findings"]] == [f.verdict for f in expected]
    assert "generator" not in saved and "n_users" not in saved["dataset"]  # what was not measured is left out
    # the same numbers render the same report: nothing in it is left to chance
    assert render_report(StudyResults.read(tmp_path / "results.json"), {"tokenizers_x": "plots/x.png"}) == text


@pytest.mark.parametrize("results_file", COMMITTED_STUDIES, ids=[p.parent.name for p in COMMITTED_STUDIES])
def test_committed_study_reports_are_rewritten_byte_for_byte(results_file, tmp_path):
    """The typed results, verdicts and writer reproduce every study report in benchmarks/results/hourglass."""
    import shutil

    shutil.copytree(results_file.parent, tmp_path / "study")
    rerender_report(tmp_path / "study")
    for name in ("report.md", "results.json"):
        assert (tmp_path / "study" / name).read_bytes() == (results_file.parent / name).read_bytes(), name




# ---------------------------------------------------------------- the flow, end to end


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A 200-item synthetic shop with its user histories, as a dataset folder."""
    from rqsid.catalog import write_catalog, write_interactions
    from rqsid.synthetic import make_demo_catalog

    catalog, inter = make_demo_catalog(n_items=200, n_users=500, seed=4)
    folder = tmp_path_factory.mktemp("tiny-shop")
    write_catalog(catalog, folder / "catalog.parquet")
    write_interactions(inter, folder / "interactions.parquet")
    return folder


TINY_SETTINGS = {
    "embed.max_chars": 200, "embed.max_seq_length": 32,  # the real text model on short texts: fast
    "quantizer.codebook_size": 16, "quantizer.epochs": 4, "quantizer.warmup_epochs": 1, "quantizer.hidden_dims": [32],
    "quantizer.latent_dim": 8, "quantizer.kmeans_iters": 10,
    "generator.epochs": 1, "generator.d_model": 16, "generator.n_heads": 2, "generator.n_layers": 1,
    "generator.valid_users": 100, "generator.beam_size": 10, "generator.eval_every": 1, "generator.warmup_steps": 5,
    "prune.max_collision_rate": 0.8,
}


def test_study_flow_end_to_end(tmp_path, tiny_dataset, prefect_api):
    from mlflow.tracking import MlflowClient

    from flows.study import hourglass_study
    from tasks.tracking import Tracker

    out = tmp_path / "report"
    result = hourglass_study(dataset=str(tiny_dataset), quick=True, seeds=2, out=str(out),
                             config=load_config(overrides=TINY_SETTINGS, profile="quick"), ks=[4],
                             command="rqsid study --dataset tiny --quick")
    text = (out / "report.md").read_text()
    saved = StudyResults.read(out / "results.json")
    assert [f["number"] for f in result["findings"]] == [1, 2, 3, 4]
    # every finding was measured (the generator ran), and the verdicts are those of the saved numbers
    assert NOT_MEASURED not in [f["verdict"] for f in result["findings"]]
    assert [f.as_dict() for f in findings(saved)] == saved.findings == result["findings"]
    assert "`rqsid study --dataset tiny --quick`" in text
    for plot in ("tokenizers_side_by_side", "uniformity_rqvae", "uniformity_rkmeans", "pruning_variants"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 0 and f"plots/{plot}.png" in text
    # the embeddings were computed by the real text model (no --embeddings given) and cached in the home
    assert saved.dataset.dim == 384 and "cache" in saved.dataset.embeddings
    assert saved.settings.quantizer["epochs"] == 4 and saved.settings.generator_minutes == 1.0  # quick profile under ours
    variants = {v["variant"] for v in saved.generator.variants}
    assert {"baseline", "drop layer 2", "top-4"} <= variants and any(v.startswith("auto top-K") for v in variants)
    # 2 seeds x 2 methods on the real input and on 2 synthetic ones; nothing was there to reuse
    assert result["reused"]["fits"] == 0 and result["reused"]["fits_total"] == 12

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

    from cli.study import command_line, register, study_config

    parser = argparse.ArgumentParser(prog="rqsid")
    register(parser.add_subparsers(dest="command"))
    argv = ["study", "--dataset", "scientific", "--quick", "--ks", "8,32", "--generator-minutes", "2",
            "--set", "quantizer.levels=4"]
    args = parser.parse_args(argv)
    line = command_line(args)
    assert parser.parse_args(shlex.split(line)[1:]) == args  # the recorded command reproduces the run
    config = study_config(args)
    # what the caller set wins; the quick profile fills the rest; the full profile is the default
    assert config.quantizer.levels == 4 and config.generator.max_train_minutes == 2.0
    assert config.quantizer.epochs == 30 and config.generator.beam_size == 10 and config.quantizer.threads == 1
    full = study_config(parser.parse_args(["study"]))
    assert full.generator.max_train_minutes == 10.0 and full.quantizer.epochs == QuantizerConfig().epochs
    with pytest.raises(RqsidError, match="quantizer.levels"):
        study_config(parser.parse_args(["study", "--set", "quantizer.levels=0"]))
