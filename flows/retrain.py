"""The retrain flow: index version + interactions -> generator training -> evaluation -> MLflow model
version; the alias "champion" moves to it only when it beats the current champion on validation
Recall@10 (NDCG@10 breaks ties)."""

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
from tasks.common import registry
from tasks.generator import flat_metrics, interactions_of, mark_registered, stage_interactions, train_and_evaluate

RANK_BY = ("valid.all.recall_at_10", "valid.all.ndcg_at_10")
GENERATOR_TAG = "rqsid.generator"  # a model version's tag: the generator version it holds


def model_name(catalog_name: str) -> str:
    return f"{catalog_name}-generator"


def beats(candidate: dict[str, float], champion: dict[str, float] | None) -> bool:
    """Strictly better on validation Recall@10, or equal on it and better on NDCG@10."""
    if champion is None or any(k not in champion for k in RANK_BY):
        return True
    return tuple(candidate[k] for k in RANK_BY) > tuple(champion[k] for k in RANK_BY)


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
        with recorder.stage("register") as stage:
            version, promoted, champion = _register(recorder, gen, name, logger)
            stage.metrics = {"model_version": version, "promoted": float(promoted)}
    return {
        "catalog_name": catalog_name,
        "index_version": index_dir.name,
        "generator_version": gen.version,
        "model_name": name,
        "model_version": version,
        "promoted": promoted,
        "previous_champion": champion,
        "metrics": gen.metrics,
        "reused": gen.reused,
        "mlflow_run_id": recorder.run_id,
        "timing": recorder.timing(),
    }


def _register(recorder: FlowRecorder, gen, name: str, logger) -> tuple[int, bool, int | None]:
    """Register the generator once (a rerun finds the recorded version) and promote it if it wins."""
    flat = flat_metrics(gen.metrics)
    current = recorder.tracker.champion(name)
    # a run killed between registering and recording it left the version in MLflow: find it, never register twice
    version = gen.registered or recorder.tracker.version_tagged(name, GENERATOR_TAG, gen.version)
    if version is None:
        from tasks.tracking import default_pip_requirements

        version = recorder.tracker.register_generator(gen.model_dir, name, flat, default_pip_requirements(),
                                                      tags={GENERATOR_TAG: gen.version})
        reach("register")
    if gen.registered is None:
        mark_registered(gen, name, version)
    champion_version = current[0] if current else None
    promoted = champion_version != version and beats(flat, current[1] if current else None)
    if promoted:
        recorder.tracker.promote(name, version)
        logger.info("model %s version %s is the new champion (valid R@10 %.4f)", name, version, flat[RANK_BY[0]])
    else:
        logger.info("model %s version %s registered; champion stays version %s", name, version, champion_version)
    return version, promoted, champion_version
