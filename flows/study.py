"""The hourglass study flow: the four findings of Kuai et al. (2024) measured on a catalog, logged to
MLflow (one nested run per experiment, every distribution report, tables and plots) and written as a
markdown report with plots and results.json (rqsid.study does the measuring and the verdicts).

Stages: data (import, validate, embeddings), tokenizers (finding 1: our RQ-VAE and residual k-means
over seeds, and the public reference SIDs), uniformity (finding 2: the same tokenizers on synthetic
uniform / Gaussian / Zipf-skewed inputs of the real size and dimension), generator (findings 3 and 4:
the generator on baseline, layer-2-dropped and top-K SIDs, head/tail split), report.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import FlowRecorder
from rqsid.config import RqsidConfig

# Mode profiles: config values the study sets unless the caller's config sets them.
# --quick: under 15 minutes on Scientific on 2 busy cores (RQ-VAE epochs cut to 30, no Gaussian input,
# 1-minute generators, beam 10).
QUICK_PROFILE: dict[str, Any] = {
    "quantizer.epochs": 30, "quantizer.threads": 1,
    "generator.max_train_minutes": 1.0, "generator.valid_users": 500, "generator.beam_size": 10, "generator.threads": 1,
}
FULL_PROFILE: dict[str, Any] = {
    "quantizer.threads": 1,
    "generator.max_train_minutes": 10.0, "generator.threads": 1,
}
QUICK_SEEDS, FULL_SEEDS = 2, 3
QUICK_INPUTS, FULL_INPUTS = ("uniform", "skewed"), ("uniform", "gaussian", "skewed")


def default_ks(codebook_size: int, quick: bool) -> list[int]:
    """Listed top-K values besides the automatic one: 1/8 of the level (quick), or 1/32, 1/8, 1/4."""
    fractions = (8,) if quick else (32, 8, 4)
    return sorted({max(1, codebook_size // f) for f in fractions})


def study_config(config: dict | None, quick: bool) -> RqsidConfig:
    """The mode's profile under the caller's (partial) config."""
    merged: dict[str, dict[str, Any]] = {}
    for key, value in (QUICK_PROFILE if quick else FULL_PROFILE).items():
        section, _, name = key.partition(".")
        merged.setdefault(section, {})[name] = value
    for section, values in (config or {}).items():
        merged.setdefault(section, {}).update(values or {})
    return RqsidConfig.model_validate(merged)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores {platform.machine()}, load average {load:.1f} at start, python {platform.python_version()}"


@flow(name="hourglass_study", log_prints=True)
def hourglass_study(
    dataset: str = "scientific",
    quick: bool = False,
    seeds: int | None = None,
    out: str | None = None,
    embeddings: str | None = None,
    interactions: str | None = None,
    config: dict | None = None,
    ks: list[int] | None = None,
    methods: list[str] | None = None,
    generator: bool = True,
    generator_seeds: int = 1,
    command: str = "",
) -> dict[str, Any]:
    """Run the study on `dataset` ("beauty", "scientific" or a catalog path) and write the report to `out`."""
    from rqsid import RqsidError
    from rqsid.home import ProjectHome
    from rqsid.study import SyntheticSpec, dataset_source, load_study_data

    logger = get_run_logger()
    cfg = study_config(config, quick)
    n_seeds = seeds or (QUICK_SEEDS if quick else FULL_SEEDS)
    if n_seeds < 1 or generator_seeds < 1 or generator_seeds > n_seeds:
        raise RqsidError(f"need 1 <= generator_seeds ({generator_seeds}) <= seeds ({n_seeds})")
    methods = list(methods or ["rqvae", "rkmeans"])
    ks = list(ks) if ks is not None else default_ks(cfg.quantizer.codebook_size, quick)
    spec = SyntheticSpec(kinds=QUICK_INPUTS if quick else FULL_INPUTS, clusters=cfg.quantizer.codebook_size)
    started = time.strftime("%Y-%m-%d %H:%M")
    host = machine()

    name = dataset_source(dataset)[0]
    out_dir = Path(out or Path("hourglass-study") / name).resolve()
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    recorder = FlowRecorder("hourglass_study", name, cfg)
    plots: dict[str, str] = {}
    with recorder.run():
        with recorder.stage("data") as stage:
            t0 = time.perf_counter()
            data = load_study_data(dataset, embeddings, interactions, cfg.embed, ProjectHome.default().cache / "study",
                                   progress=False)
            stage.compute_s = time.perf_counter() - t0
            stage.metrics = {"n_items": len(data.item_ids), "dim": data.X.shape[1],
                             "n_interactions": data.interactions.num_rows if data.interactions is not None else 0}
        results = _results_header(data, cfg, command, started, host, quick, n_seeds, generator_seeds, methods, ks)
        with recorder.stage("tokenizers") as stage:
            real_fits = _tokenizers_stage(recorder, stage, data, cfg, methods, n_seeds, results, plots, out_dir)
        with recorder.stage("uniformity") as stage:
            _uniformity_stage(recorder, stage, data, cfg, methods, n_seeds, spec, real_fits, results, plots, out_dir)
        if generator and data.interactions is not None:
            with recorder.stage("generator") as stage:
                _generator_stage(recorder, stage, data, cfg, ks, generator_seeds, real_fits, results, plots, out_dir, logger)
        elif generator:
            logger.warning("no interactions for %s: findings 3 and 4 are not measured", data.name)
        with recorder.stage("report") as stage:
            report = _report_stage(recorder, stage, results, plots, out_dir)
    return {"out": str(out_dir), "report": str(report), "findings": results["findings"],
            "mlflow_run_id": recorder.run_id, "timing": recorder.timing()}


def _results_header(data, cfg, command, started, host, quick, n_seeds, generator_seeds, methods, ks) -> dict[str, Any]:
    return {
        "command": command, "made": started, "machine": host,
        "dataset": {"name": data.name, "n_items": len(data.item_ids), "dim": int(data.X.shape[1]),
                    "embeddings": data.embeddings, "quarantined": data.quarantined,
                    "n_interactions": data.interactions.num_rows if data.interactions is not None else 0},
        "settings": {"quick": quick, "seeds": n_seeds, "generator_seeds": generator_seeds, "methods": methods, "ks": ks,
                     "quantizer": {k: getattr(cfg.quantizer, k) for k in ("levels", "codebook_size", "epochs", "latent_dim")},
                     "generator_minutes": cfg.generator.max_train_minutes,
                     "prune": {"gini_threshold": cfg.prune.gini_threshold, "max_collision_rate": cfg.prune.max_collision_rate}},
    }


# ---------------------------------------------------------------- stages


def _log_plot(recorder: FlowRecorder, plots: dict[str, str], out_dir: Path, name: str, path: Path) -> None:
    plots[name] = str(path.relative_to(out_dir))
    recorder.log_file(path, "plots")


def _log_table(rows: list[dict], artifact_file: str) -> None:
    import mlflow
    import pandas as pd

    mlflow.log_table(pd.DataFrame(rows), artifact_file=artifact_file)


def _tokenizers_stage(recorder, stage, data, cfg, methods, n_seeds, results, plots, out_dir) -> list:
    """Finding 1: our tokenizers on the real embeddings over seeds, and the reference SIDs."""
    from rqsid.metrics import report_to_json, table_report
    from rqsid.plots import plot_lorenz, plot_side_by_side, plot_token_frequencies
    from rqsid.sids import load_sids
    from rqsid.study import SweepFit, layer_rows, quantize_sweep, summarise

    started = time.perf_counter()
    fits = quantize_sweep(lambda seed: {"real": data.X}, methods, range(n_seeds), cfg.quantizer, keep_tables=("real",),
                          item_ids={"real": data.item_ids}, log=print)
    references = [SweepFit("reference", name, 0, report_to_json(table_report(load_sids(path, id_offset=data.id_offset))))
                  for name, path in data.references.items()]
    rows = [row for fit in fits + references for row in layer_rows(fit)]
    results["tokenizers"] = {"rows": rows, "summary": summarise(rows),
                             "references": {name: str(path) for name, path in data.references.items()}}
    side = {f"{f.source} {f.method}": f.report for f in fits + references if f.seed == 0}
    first = next(f for f in fits if f.seed == 0)
    stem = f"real {first.method} seed 0"
    _log_plot(recorder, plots, out_dir, "tokenizers_side_by_side",
              plot_side_by_side(side, out_dir / "plots" / "tokenizers_side_by_side.png", f"{data.name}: SIDs on the real embeddings (seed 0)"))
    _log_plot(recorder, plots, out_dir, "tokenizers_frequencies",
              plot_token_frequencies(first.report, out_dir / "plots" / "tokenizers_frequencies.png", f"{data.name}: {stem}"))
    _log_plot(recorder, plots, out_dir, "tokenizers_lorenz",
              plot_lorenz(first.report, out_dir / "plots" / "tokenizers_lorenz.png", f"{data.name}: {stem}"))
    stage.compute_s = time.perf_counter() - started
    for fit in fits + references:
        recorder.tracker.log_report(fit.report, f"{fit.source}.{fit.method}.s{fit.seed}")
    _log_table(rows, "tables/tokenizers_layers.json")
    _log_table(results["tokenizers"]["summary"], "tables/tokenizers_summary.json")
    stage.metrics = {f"{r['source']}.{r['method']}.l{r['level']}.gini_mean": r["gini_mean"]
                     for r in results["tokenizers"]["summary"] if r["gini_mean"] is not None}
    return fits


def _uniformity_stage(recorder, stage, data, cfg, methods, n_seeds, spec, real_fits, results, plots, out_dir) -> None:
    """Finding 2: the same tokenizers on synthetic inputs of the real size and dimension (redrawn per seed)."""
    from rqsid.plots import plot_side_by_side
    from rqsid.study import layer_rows, quantize_sweep, summarise

    started = time.perf_counter()
    n, d = data.X.shape
    fits = quantize_sweep(lambda seed: spec.make(n, d, 1000 + seed), methods, range(n_seeds), cfg.quantizer, log=print)
    fits += real_fits
    rows = [row for fit in fits for row in layer_rows(fit)]
    results["uniformity"] = {"rows": rows, "summary": summarise(rows), "inputs": spec.describe(),
                             "synthetic": {"clusters": spec.clusters, "exponent": spec.exponent, "spread": spec.spread}}
    for method in methods:
        side = {f.source: f.report for f in fits if f.method == method and f.seed == 0}
        path = plot_side_by_side(side, out_dir / "plots" / f"uniformity_{method}.png",
                                 f"{data.name}: {method} on synthetic and real inputs ({n} x {d}, seed 0)")
        _log_plot(recorder, plots, out_dir, f"uniformity_{method}", path)
    stage.compute_s = time.perf_counter() - started
    for fit in fits:
        if fit.source != "real":
            recorder.tracker.log_report(fit.report, f"{fit.source}.{fit.method}.s{fit.seed}")
    _log_table(rows, "tables/uniformity_layers.json")
    _log_table(results["uniformity"]["summary"], "tables/uniformity_summary.json")
    stage.metrics = {f"{r['source']}.{r['method']}.l{r['level']}.gini_mean": r["gini_mean"]
                     for r in results["uniformity"]["summary"]}


def _generator_stage(recorder, stage, data, cfg, ks, generator_seeds, real_fits, results, plots, out_dir, logger) -> None:
    """Findings 3 and 4: the generator on each SID variant of our RQ-VAE (seed s SIDs, generator seed s)."""
    from rqsid.metrics import table_report
    from rqsid.plots import plot_side_by_side
    from rqsid.study import (generator_comparisons, popularity_head_tail, prune_variants, run_generator, table_summary,
                             variant_key)

    started = time.perf_counter()
    rqvae = {f.seed: f.table for f in real_fits if f.method == "rqvae"}
    base_fits = rqvae or {f.seed: f.table for f in real_fits}  # without an RQ-VAE, the first method's SIDs
    runs, variants_out = [], []
    for seed in range(generator_seeds):
        unpruned = base_fits[seed]
        variants = prune_variants(unpruned, ks, cfg.prune)
        if seed == 0:
            path = plot_side_by_side({name: table_report(t) for name, t in variants.items()},
                                     out_dir / "plots" / "pruning_variants.png", f"{data.name}: SID variants the generator learns (seed 0)")
            _log_plot(recorder, plots, out_dir, "pruning_variants", path)
        trained: dict[str, Any] = {}
        gcfg = cfg.generator.model_copy(update={"seed": seed})
        for name, table in variants.items():
            key = variant_key(table)
            if key not in trained:
                logger.info("generator seed %d on %s SIDs (%.1f min budget)", seed, name, gcfg.max_train_minutes)
                trained[key] = run_generator(name, table, unpruned, data.interactions, gcfg, log=print)
            run = trained[key]
            run = type(run)(name, seed, run.metrics, run.hits, run.is_head, run.stats)
            runs.append(run)
            summary = table_summary(table, cfg.prune.level)
            variants_out.append({"variant": name, "seed": seed, **summary, "layer2_gini": summary[f"layer{cfg.prune.level}_gini"],
                                 "metrics": run.metrics, "stats": run.stats})
            recorder.tracker.log_report(table_report(table), f"sids.{_slug(name)}.s{seed}")
    comparisons = generator_comparisons(runs)
    control = popularity_head_tail(base_fits[0], data.interactions)
    results["generator"] = {"variants": variants_out, "comparisons": comparisons, "popularity": control}
    results["dataset"]["n_users"] = runs[0].stats["n_users"]
    stage.compute_s = time.perf_counter() - started
    _log_table([{"variant": v["variant"], "seed": v["seed"], "k": v["k"], "collision_rate": v["collision_rate"],
                 "mean_sid_length": v["mean_sid_length"], **{f"{subset}.{m}": v["metrics"][subset][m]
                 for subset in ("all", "head", "tail") for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}}
                for v in variants_out], "tables/generator_variants.json")
    stage.metrics = {f"{_slug(v['variant'])}.s{v['seed']}.{subset}.{m.replace('@', '_at_')}": v["metrics"][subset][m]
                     for v in variants_out for subset in ("all", "head", "tail") for m in ("recall@10", "ndcg@10")}


def _report_stage(recorder, stage, results, plots, out_dir) -> Path:
    from rqsid.study import findings, write_report

    started = time.perf_counter()
    results["timing"] = recorder.timing()
    results["findings"] = [f.as_dict() for f in findings(results)]
    report = write_report(results, out_dir, plots)
    stage.compute_s = time.perf_counter() - started
    stage.metrics = {f"finding{f['number']}.reproduced": float(f["verdict"] == "reproduced") for f in results["findings"]}
    recorder.log_file(report)
    recorder.log_file(out_dir / "results.json")
    for f in results["findings"]:
        print(f"finding {f['number']}: {f['verdict']} - {f['reason']}")
    return report


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")
