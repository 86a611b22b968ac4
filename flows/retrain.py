"""The retrain flow: index version + interactions -> generator training -> evaluation -> the contest ->
MLflow model version. The alias "champion" moves to the new version only when it beats the champion by
more than noise on the same validation users of today's data (tasks.champion.contest). When the champion
keeps its title and today's index kept every SID it knows (the stable path), the champion is registered
again serving today's index, and the alias moves to that version: the same weights, with today's new
items in its trie. When SIDs changed, the champion keeps serving the index it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.audit import promotion_verdict
from flows.common import FlowRecorder
from rqsid import RqsidError
from rqsid.checkpoints import reach
from rqsid.config import RqsidConfig
from rqsid.home import ProjectHome
from rqsid.index import index_manifest
from rqsid.locks import catalog_lock
from rqsid.sources import DEMO_ITEMS, catalog_name_of
from tasks.champion import contest
from tasks.common import registry
from tasks.generator import flat_metrics, interactions_of, mark_registered, stage_interactions, train_and_evaluate
from tasks.serving import metric_names, model_name, register_bundle

__all__ = ["model_name", "retrain"]
GENERATOR_TAG = "rqsid.generator"  # a model version's tag: the generator version it holds

@flow(name="retrain", log_prints=True)
def retrain(
    catalog_name: str | None = None,
    index_version: str | None = None,
    interactions: str | None = None,
    config: RqsidConfig | None = None,
    catalog: str | None = None,
    demo_items: int = DEMO_ITEMS,
) -> dict[str, Any]:
    """Train a generator on an index version (default: the published one) and register it.

    catalog: a catalog source to re-index first (what a drift event passes), so the generator learns
    the SIDs of today's catalog."""
    cfg = config or RqsidConfig()
    if catalog is not None:
        from flows.reindex import reindex

        catalog_name = reindex(catalog=catalog, interactions=interactions, config=cfg, demo_items=demo_items)["catalog_name"]
    catalog_name = catalog_name or catalog_name_of(None)
    reg = registry(catalog_name)
    index_dir = reg.path(index_version) if index_version else reg.current_path()
    if index_dir is None:
        raise RqsidError(f"catalog {catalog_name!r} has no published index; run `rqsid reindex` first")
    recorder = FlowRecorder("retrain", catalog_name, cfg)
    name = model_name(catalog_name)
    with catalog_lock(ProjectHome.default().root, catalog_name, what="retrain"), recorder.run():
        recorder.lineage |= index_lineage(index_dir)
        with recorder.stage("train") as stage:
            inter = Path(stage_interactions(interactions, index_dir)) if interactions else interactions_of(index_dir)
            gen = train_and_evaluate(index_dir, inter, cfg.generator, on_epoch=_epoch_logger(recorder, stage.run_id))
            stage.compute_s, stage.lineage = gen.compute_s, {"generator": gen.version}
            stage.metrics = {**flat_metrics(gen.metrics), "reused": float(gen.reused)}
            stage.compute_s += _log_learning_curve(recorder, gen, stage.run_id)
            recorder.log_json(gen.metrics, "evaluation.json")
            recorder.log_json(gen.stats, "train_stats.json")
        with recorder.stage("contest") as stage:
            outcome = contest(gen, index_dir, inter, name, cfg, recorder.tracker)
            stage.compute_s, stage.metrics = outcome.compute_s, outcome.metrics()
            recorder.log_json(outcome.as_dict(), "contest.json")
        with recorder.stage("register") as stage:
            version, promoted, champion, serving = _register(recorder, gen, outcome, name)
            stage.metrics = {"model_version": version, "promoted": float(promoted), "champion_version": serving}
            _describe(recorder, name, version, gen, index_dir)
    return {
        "catalog_name": catalog_name,
        "index_version": index_dir.name,
        "generator_version": gen.version,
        "model_name": name,
        "model_version": version,
        "promoted": promoted,
        "previous_champion": champion,
        "champion": serving,
        "contest": outcome.as_dict(),
        "metrics": gen.metrics,
        "reused": gen.reused,
        "mlflow_run_id": recorder.run_id,
        "timing": recorder.timing(),
    }


def _register(recorder: FlowRecorder, gen, outcome, name: str) -> tuple[int, bool, int | None, int]:
    """Register the challenger once (a rerun finds the recorded version; a run killed between registering and
    recording it left the version in MLflow, found by its tag: never registered twice); promote it when it
    won, else register the champion serving today's index when it was rebound. Returns (challenger version,
    promoted, previous champion version, champion version now)."""
    tracker = recorder.tracker
    version = gen.registrations.get(name) or tracker.version_tagged(name, GENERATOR_TAG, gen.version)
    if version is None:
        version = register_bundle(tracker, outcome.challenger, name, outcome.challenger_figures, flat_metrics(gen.metrics),
                                  tags={GENERATOR_TAG: gen.version})
        reach("register")
    if gen.registrations.get(name) is None:
        mark_registered(gen, name, version)
    previous = outcome.champion.version if outcome.champion else None
    promoted, serving = False, previous
    if previous == version:
        serving = version
    elif outcome.challenger_wins:
        tracker.promote(name, version)
        promoted, serving = True, version
    elif outcome.defender_rebound:
        serving = register_bundle(tracker, outcome.defender, name, outcome.defender_figures,
                                  tags={"rqsid.rebound_from": str(previous)})
        tracker.promote(name, serving)
    figures = {f"promotion.challenger.{k}": v for k, v in metric_names(outcome.challenger_figures).items()}
    figures |= {f"promotion.champion.{k}": v for k, v in metric_names(outcome.defender_figures or {}).items()}
    verdict = promotion_verdict(version, promoted, previous, serving, outcome.challenger_figures, outcome.defender_figures,
                                outcome.result.rule if outcome.result else "", outcome.serving_note)
    figures |= {"promotion.promoted": float(promoted), "promotion.champion_version": serving}
    recorder.decide("promotion", verdict, figures)
    return version, promoted, previous, serving


def index_lineage(index_dir: Path) -> dict[str, str]:
    """The versions a model trained on this index depends on: catalog, embedding, tokenizer, index."""
    versions = index_manifest(index_dir).get("versions", {})
    return {"catalog": versions.get("catalog"), "embedding": versions.get("embeddings"),
            "tokenizer": versions.get("tokenizer"), "index": index_dir.name}


def _epoch_logger(recorder: FlowRecorder, run_id: str):
    """Each training epoch as step-wise metrics of the train stage's run (`epoch.loss`, `epoch.valid.recall_at_10`)."""
    return lambda record: recorder.tracker.log_curve(run_id, "epoch", [record], step_key="epoch")


def _log_learning_curve(recorder: FlowRecorder, gen, run_id: str) -> float:
    """The learning-curve plot (and, for a stored generator, its curve as step-wise metrics); drawing seconds."""
    from rqsid.plots import plot_learning_curve

    history, best_epoch = gen.training_history()
    if gen.reused:
        recorder.tracker.log_curve(run_id, "epoch", history, step_key="epoch")
    title = f"generator {gen.version}: learning curve ({len(history)} epochs)"
    return recorder.log_plot(lambda path: plot_learning_curve(history, path, best_epoch, title), "learning_curve")


def _describe(recorder: FlowRecorder, name: str, version: int, gen, index_dir: Path) -> None:
    """Lineage tags, headline figures and a description on the registered model version."""
    from flows.audit import headline_metrics, mlflow_run_url, mlflow_ui_url, model_description

    flat = flat_metrics(gen.metrics)
    run_url = mlflow_run_url(mlflow_ui_url(recorder.config.orchestration), recorder.experiment, recorder.run_id)
    description = model_description(recorder.catalog_name, index_manifest(index_dir), flat,
                                    recorder.verdict("promotion"), run_url)
    lineage = index_lineage(index_dir) | {"generator": gen.version}
    recorder.tracker.describe_model_version(name, version, description, lineage, headline_metrics(flat))
