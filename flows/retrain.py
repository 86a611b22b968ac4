"""The retrain flow: index version + interactions -> generator training -> evaluation -> MLflow model
version; the alias "champion" moves to it only when it beats the current champion on validation
Recall@10 (NDCG@10 breaks ties)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.audit import promotion_verdict
from flows.common import FlowRecorder
from rqsid import RqsidError
from rqsid.config import RqsidConfig
from rqsid.index import index_manifest
from rqsid.sources import DEMO_ITEMS, catalog_name_of
from tasks.common import registry
from tasks.generator import flat_metrics, interactions_of, mark_registered, stage_interactions, train_and_evaluate

RANK_BY = ("valid.all.recall_at_10", "valid.all.ndcg_at_10")


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
    with recorder.run():
        recorder.lineage |= index_lineage(index_dir)
        with recorder.stage("train") as stage:
            inter = Path(stage_interactions(interactions, index_dir)) if interactions else interactions_of(index_dir)
            gen = train_and_evaluate(index_dir, inter, cfg.generator, on_epoch=_epoch_logger(recorder, stage.run_id))
            stage.compute_s, stage.lineage = gen.compute_s, {"generator": gen.version}
            stage.metrics = {**flat_metrics(gen.metrics), "reused": float(gen.reused)}
            stage.compute_s += _log_learning_curve(recorder, gen, stage.run_id)
            recorder.log_json(gen.metrics, "evaluation.json")
            recorder.log_json(gen.stats, "train_stats.json")
        with recorder.stage("register") as stage:
            version, promoted, champion = _register(recorder, gen, name)
            stage.metrics = {"model_version": version, "promoted": float(promoted)}
            _describe(recorder, name, version, gen, index_dir)
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


def _register(recorder: FlowRecorder, gen, name: str) -> tuple[int, bool, int | None]:
    """Register the generator once (a rerun finds the recorded version) and promote it if it wins."""
    flat = flat_metrics(gen.metrics)
    current = recorder.tracker.champion(name)
    version = gen.registered
    if version is None:
        from tasks.tracking import default_pip_requirements

        version = recorder.tracker.register_generator(gen.model_dir, name, flat, default_pip_requirements())
        mark_registered(gen, name, version)
    champion_version = current[0] if current else None
    promoted = champion_version != version and beats(flat, current[1] if current else None)
    if promoted:
        recorder.tracker.promote(name, version)
    figures = {f"promotion.challenger.{k}": flat[k] for k in RANK_BY if k in flat} | {"promotion.promoted": float(promoted)}
    if current:
        figures |= {f"promotion.champion.{k}": current[1][k] for k in RANK_BY if k in current[1]}
    recorder.decide("promotion", promotion_verdict(version, promoted, flat, champion_version, current and current[1], RANK_BY),
                    figures)
    return version, promoted, champion_version


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
