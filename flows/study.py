"""The hourglass study flow: the four findings of Kuai et al. (2024) measured on a catalog, logged to
MLflow (one nested run per stage, every distribution report, tables and plots) and written as a markdown
report with plots and results.json (rqsid.study does the measuring and the verdicts).

Stages: data (import, validate, embeddings), tokenizers (finding 1: our RQ-VAE and residual k-means
over seeds, and the public reference SIDs), uniformity (finding 2: the same tokenizers on synthetic
uniform / Gaussian / Zipf-skewed inputs of the real size and dimension), generator (findings 3 and 4:
the generator on baseline, layer-2-dropped and top-K SIDs, head/tail split), report. Every fit and every
generator run is a task whose result is kept in the version store: a rerun after a crash resumes.
"""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import FlowRecorder
from rqsid.config import RqsidConfig, load_config
from rqsid.study import (
    DatasetInfo,
    GeneratorResults,
    StudyData,
    StudyResults,
    StudySettings,
    SyntheticSpec,
    TokenizerResults,
    UniformityResults,
    dataset_source,
)
from tasks.study import fit_sids, study_data, train_variant


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
    config: RqsidConfig | None = None,
    ks: list[int] | None = None,
    methods: list[str] | None = None,
    generator: bool = True,
    generator_seeds: int = 1,
    command: str = "",
) -> dict[str, Any]:
    """Run the study on `dataset` ("beauty", "scientific" or a catalog path) and write the report to `out`.

    config: the whole configuration (default: the "quick" or "full" profile, as `rqsid study` resolves it)."""
    cfg = config or load_config(profile="quick" if quick else "full")
    settings = StudySettings.make(cfg, quick, seeds, generator_seeds, methods, ks)
    header = {"command": command, "made": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    name = dataset_source(dataset)[0]
    out_dir = Path(out or Path("hourglass-study") / name).resolve()
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    recorder = FlowRecorder("hourglass_study", name, cfg)
    run = _StudyRun(recorder, cfg, settings, out_dir)
    with recorder.run():
        with recorder.stage("data") as stage:
            t0 = time.perf_counter()
            data = study_data(dataset, embeddings, interactions, cfg.embed)
            stage.compute_s = time.perf_counter() - t0
            stage.metrics = {"n_items": len(data.item_ids), "dim": data.X.shape[1], "n_interactions": _n_rows(data.interactions)}
        with recorder.stage("tokenizers") as stage:
            tokenizers, real_fits = run.tokenizers(stage, data)
        with recorder.stage("uniformity") as stage:
            uniformity = run.uniformity(stage, data, real_fits)
        found_generator, n_users = None, None
        if generator and data.interactions is not None:
            with recorder.stage("generator") as stage:
                found_generator, n_users = run.generator(stage, data, real_fits)
        elif generator:
            get_run_logger().warning("no interactions for %s: findings 3 and 4 are not measured", data.name)
        dataset_info = DatasetInfo(name=data.name, n_items=len(data.item_ids), dim=int(data.X.shape[1]),
                                   embeddings=data.embeddings, quarantined=data.quarantined,
                                   n_interactions=_n_rows(data.interactions), n_users=n_users)
        results = StudyResults(**header, dataset=dataset_info, settings=settings, tokenizers=tokenizers,
                               uniformity=uniformity, generator=found_generator)
        with recorder.stage("report") as stage:
            results, report = run.report(stage, results)
    return {"out": str(out_dir), "report": str(report), "findings": results.findings, "reused": dict(run.reused),
            "mlflow_run_id": recorder.run_id, "timing": recorder.timing()}


def _n_rows(table) -> int:
    return table.num_rows if table is not None else 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


class _StudyRun:
    """The stages of one study run: each measures through tasks, then logs its tables and plots."""

    def __init__(self, recorder: FlowRecorder, cfg: RqsidConfig, settings: StudySettings, out_dir: Path):
        self.recorder, self.cfg, self.settings, self.out_dir = recorder, cfg, settings, out_dir
        self.plots: dict[str, str] = {}
        self.reused: Counter[str] = Counter()  # finished units read back from the version store

    def _fit(self, source: str, input_id: str, draw, method: str, seed: int, keep_table: bool = False):
        fit, reused = fit_sids(source, input_id, draw, self.cfg.quantizer, method, seed, keep_table)
        self.reused["fits"] += reused
        self.reused["fits_total"] += 1
        return fit

    def _plot(self, name: str, path: Path) -> None:
        self.plots[name] = str(path.relative_to(self.out_dir))
        self.recorder.log_file(path, "plots")

    def _log_table(self, rows: list[dict], artifact_file: str) -> None:
        import mlflow
        import pandas as pd

        mlflow.log_table(pd.DataFrame(rows), artifact_file=artifact_file)

    def tokenizers(self, stage, data: StudyData) -> tuple[TokenizerResults, list]:
        """Finding 1: our tokenizers on the real embeddings over seeds, and the reference SIDs."""
        from rqsid.metrics import report_to_json, table_report
        from rqsid.plots import plot_lorenz, plot_side_by_side, plot_token_frequencies
        from rqsid.sids import load_sids
        from rqsid.study import SweepFit, layer_rows, summarise

        started = time.perf_counter()
        fits = [self._fit("real", data.input_id, lambda: (data.item_ids, data.X), method, seed, keep_table=True)
                for seed in range(self.settings.seeds) for method in self.settings.methods]
        references = [SweepFit("reference", name, 0, report_to_json(table_report(load_sids(path, id_offset=data.id_offset))))
                      for name, path in data.references.items()]
        rows = [row for fit in fits + references for row in layer_rows(fit)]
        found = TokenizerResults(rows=rows, summary=summarise(rows), references={n: str(p) for n, p in data.references.items()})
        side = {f"{f.source} {f.method}": f.report for f in fits + references if f.seed == 0}
        first = next(f for f in fits if f.seed == 0)
        stem, plots = f"real {first.method} seed 0", self.out_dir / "plots"
        self._plot("tokenizers_side_by_side", plot_side_by_side(side, plots / "tokenizers_side_by_side.png",
                                                                f"{data.name}: SIDs on the real embeddings (seed 0)"))
        self._plot("tokenizers_frequencies", plot_token_frequencies(first.report, plots / "tokenizers_frequencies.png",
                                                                    f"{data.name}: {stem}"))
        self._plot("tokenizers_lorenz", plot_lorenz(first.report, plots / "tokenizers_lorenz.png", f"{data.name}: {stem}"))
        stage.compute_s = time.perf_counter() - started
        for fit in fits + references:
            self.recorder.tracker.log_report(fit.report, f"{fit.source}.{fit.method}.s{fit.seed}")
        self._log_table(rows, "tables/tokenizers_layers.json")
        self._log_table(found.summary, "tables/tokenizers_summary.json")
        stage.metrics = {f"{r['source']}.{r['method']}.l{r['level']}.gini_mean": r["gini_mean"]
                         for r in found.summary if r["gini_mean"] is not None}
        return found, fits

    def uniformity(self, stage, data: StudyData, real_fits: list) -> UniformityResults:
        """Finding 2: the same tokenizers on synthetic inputs of the real size and dimension (redrawn per seed)."""
        from rqsid.plots import plot_side_by_side
        from rqsid.study import layer_rows, summarise

        started = time.perf_counter()
        spec = SyntheticSpec(kinds=self.settings.inputs, clusters=self.cfg.quantizer.codebook_size)
        (n, d), fits = data.X.shape, []
        for seed in range(self.settings.seeds):
            for kind in spec.kinds:
                draw = lambda kind=kind, seed=seed: (None, spec.make_one(kind, n, d, 1000 + seed))  # noqa: E731
                fits += [self._fit(kind, spec.input_id(kind, n, d, 1000 + seed), draw, method, seed)
                         for method in self.settings.methods]
        fits += real_fits
        rows = [row for fit in fits for row in layer_rows(fit)]
        found = UniformityResults(rows=rows, summary=summarise(rows), inputs=spec.describe(),
                                  synthetic={"clusters": spec.clusters, "exponent": spec.exponent, "spread": spec.spread})
        for method in self.settings.methods:
            side = {f.source: f.report for f in fits if f.method == method and f.seed == 0}
            title = f"{data.name}: {method} on synthetic and real inputs ({n} x {d}, seed 0)"
            path = plot_side_by_side(side, self.out_dir / "plots" / f"uniformity_{method}.png", title)
            self._plot(f"uniformity_{method}", path)
        stage.compute_s = time.perf_counter() - started
        for fit in fits:
            if fit.source != "real":
                self.recorder.tracker.log_report(fit.report, f"{fit.source}.{fit.method}.s{fit.seed}")
        self._log_table(rows, "tables/uniformity_layers.json")
        self._log_table(found.summary, "tables/uniformity_summary.json")
        stage.metrics = {f"{r['source']}.{r['method']}.l{r['level']}.gini_mean": r["gini_mean"] for r in found.summary}
        return found

    def generator(self, stage, data: StudyData, real_fits: list) -> tuple[GeneratorResults, int]:
        """Findings 3 and 4: the generator on each SID variant of our RQ-VAE (seed s SIDs, generator seed s)."""
        from rqsid.metrics import table_report
        from rqsid.plots import plot_side_by_side
        from rqsid.study import generator_comparisons, popularity_head_tail, prune_variants, table_summary
        from rqsid.study.variants import table_digest

        started = time.perf_counter()
        level, interactions_digest = self.cfg.prune.level, table_digest(data.interactions)
        rqvae = {f.seed: f.table for f in real_fits if f.method == "rqvae"}
        base_fits = rqvae or {f.seed: f.table for f in real_fits}  # without an RQ-VAE, the first method's SIDs
        runs, variants_out = [], []
        for seed in range(self.settings.generator_seeds):
            unpruned = base_fits[seed]
            variants = prune_variants(unpruned, self.settings.ks, self.cfg.prune)
            if seed == 0:
                self._plot("pruning_variants", plot_side_by_side({name: table_report(t) for name, t in variants.items()},
                                                                 self.out_dir / "plots" / "pruning_variants.png",
                                                                 f"{data.name}: SID variants the generator learns (seed 0)"))
            gcfg = self.cfg.generator.sid_only().model_copy(update={"seed": seed})  # the SIDs' own worth
            for name, table in variants.items():
                run, reused = train_variant(name, table, unpruned, data.interactions, interactions_digest, gcfg)
                self.reused["generators"] += reused
                self.reused["generators_total"] += 1
                runs.append(run)
                summary = table_summary(table, level)
                variants_out.append({"variant": name, "seed": seed, **summary, "layer2_gini": summary[f"layer{level}_gini"],
                                     "metrics": run.metrics, "stats": run.stats})
                self.recorder.tracker.log_report(table_report(table), f"sids.{_slug(name)}.s{seed}")
        found = GeneratorResults(variants=variants_out, comparisons=generator_comparisons(runs),
                                 popularity=popularity_head_tail(base_fits[0], data.interactions))
        stage.compute_s = time.perf_counter() - started
        self._log_table([{"variant": v["variant"], "seed": v["seed"], "k": v["k"], "collision_rate": v["collision_rate"],
                          "mean_sid_length": v["mean_sid_length"], **{f"{subset}.{m}": v["metrics"][subset][m]
                          for subset in ("all", "head", "tail") for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}}
                         for v in variants_out], "tables/generator_variants.json")
        stage.metrics = {f"{_slug(v['variant'])}.s{v['seed']}.{subset}.{m.replace('@', '_at_')}": v["metrics"][subset][m]
                         for v in variants_out for subset in ("all", "head", "tail") for m in ("recall@10", "ndcg@10")}
        return found, runs[0].stats["n_users"]

    def report(self, stage, results: StudyResults) -> tuple[StudyResults, Path]:
        from rqsid.study import findings, write_report

        started = time.perf_counter()
        results = results.model_copy(update={"timing": self.recorder.timing()})
        results = results.model_copy(update={"findings": [f.as_dict() for f in findings(results)]})
        report = write_report(results, self.out_dir, self.plots)
        stage.compute_s = time.perf_counter() - started
        stage.metrics = {f"finding{f['number']}.reproduced": float(f["verdict"] == "reproduced") for f in results.findings}
        self.recorder.log_file(report)
        self.recorder.log_file(self.out_dir / "results.json")
        for f in results.findings:
            print(f"finding {f['number']}: {f['verdict']} - {f['reason']}")
        return results, report
