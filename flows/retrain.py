"""The retrain flow: index version + interactions -> generator training -> evaluation -> the contest ->
MLflow model version. The alias "champion" moves to the new version only when it beats the champion by
more than noise on the same validation users of today's data (tasks.champion.contest). When the champion
keeps its title and today's index kept every SID it knows (the stable path), the champion is registered
again serving today's index, and the alias moves to that version: the same weights, with today's new
items in its trie. When SIDs changed, the champion keeps serving the index it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import FlowRecorder
from rqsid import RqsidError
from rqsid.checkpoints import reach
from rqsid.config import RqsidConfig
from rqsid.home import ProjectHome
from rqsid.locks import catalog_lock
from rqsid.sources import DEMO_ITEMS, catalog_name_of
from tasks.champion import contest
from tasks.common import registry
from tasks.generator import flat_metrics, interactions_of, mark_registered, stage_interactions, train_and_evaluate
from tasks.serving import model_name, register_bundle

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
    logger = get_run_logger()
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
        recorder.lineage["index"] = index_dir.name
        with recorder.stage("train") as stage:
            inter = Path(stage_interactions(interactions, index_dir)) if interactions else interactions_of(index_dir)
            gen = train_and_evaluate(index_dir, inter, cfg.generator)
            stage.compute_s, stage.lineage = gen.compute_s, {"generator": gen.version}
            stage.metrics = {**flat_metrics(gen.metrics), "reused": float(gen.reused)}
            recorder.log_json(gen.metrics, "evaluation.json")
            recorder.log_json(gen.stats, "train_stats.json")
        with recorder.stage("contest") as stage:
            outcome = contest(gen, index_dir, inter, name, cfg, recorder.tracker)
            stage.compute_s, stage.metrics = outcome.compute_s, outcome.metrics()
            recorder.log_json(outcome.as_dict(), "contest.json")
            logger.info("contest on %s: %s", outcome.cases, outcome.result.rule if outcome.result else outcome.serving_note)
        with recorder.stage("register") as stage:
            version, promoted, champion, serving = _register(recorder, gen, outcome, name, logger)
            stage.metrics = {"model_version": version, "promoted": float(promoted), "champion_version": serving}
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


def _register(recorder: FlowRecorder, gen, outcome, name: str, logger) -> tuple[int, bool, int | None, int]:
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
    if previous == version:
        return version, False, previous, version
    if outcome.challenger_wins:
        tracker.promote(name, version)
        logger.info("model %s version %s is the new champion (%s)", name, version, _figures(outcome.challenger_figures))
        return version, True, previous, version
    serving = previous
    if outcome.defender_rebound:
        serving = register_bundle(tracker, outcome.defender, name, outcome.defender_figures,
                                  tags={"rqsid.rebound_from": str(previous)})
        tracker.promote(name, serving)
    logger.info("model %s version %s registered; champion stays version %s, %s (now version %s)", name, version,
                previous, outcome.serving_note, serving)
    return version, False, previous, serving


def _figures(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "n") + f" on {figures.get('n', 0)} users"
