"""The drift watch: today's catalog against the published index. It measures the share of new or
changed items (by content hash), their reconstruction error under the index's tokenizer relative to
the index's own, and the layer-2 Gini once they get SIDs; over a threshold (DriftConfig) it emits
the Prefect event `rqsid.drift.detected`, which a deployment trigger turns into a retrain run."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.audit import drift_verdict
from flows.common import FlowRecorder, catalog_stage, embed_stage
from rqsid.config import RqsidConfig
from rqsid.home import ProjectHome
from rqsid.locks import catalog_lock
from rqsid.sources import DEMO_ITEMS, DEMO_SOURCE, catalog_name_of
from tasks.common import registry
from tasks.index import measure_drift

DRIFT_EVENT = "rqsid.drift.detected"


def catalog_resource(catalog_name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"rqsid.catalog.{catalog_name}", "prefect.resource.name": catalog_name}


def emit_drift(catalog_name: str, source: str | None, index_version: str, report: dict,
               behaviour: dict | None = None) -> str | None:
    """Emit `rqsid.drift.detected` for the catalog; the payload carries what a retrain run needs and the figures
    (`drift`: the catalog's, `behaviour`: the champion's on newer interactions)."""
    from prefect.events import emit_event

    payload = {"catalog_name": catalog_name, "source": source, "index_version": index_version, "drift": report,
               "behaviour": behaviour}
    event = emit_event(event=DRIFT_EVENT, resource=catalog_resource(catalog_name), payload=payload)
    return str(event.id) if event else None


@flow(name="drift_watch", log_prints=True)
def drift_watch(catalog: str | None = None, config: RqsidConfig | None = None, demo_items: int = DEMO_ITEMS,
                emit: bool = True, interactions: str | None = None) -> dict[str, Any]:
    """Measure drift of a catalog (None = the synthetic demo) against its published index, and of its users
    (today's interactions: `interactions`, else those of the catalog source) against its champion."""
    cfg = config or RqsidConfig()
    logger = get_run_logger()
    recorder = FlowRecorder("drift_watch", catalog_name_of(catalog), cfg)
    with catalog_lock(ProjectHome.default().root, catalog_name_of(catalog), what="drift"), recorder.run():
        cat = catalog_stage(recorder, catalog, interactions, demo_items)
        current = registry(cat.name).current_path()
        if current is None:
            recorder.decide("drift", "no published index yet: nothing to compare with; the re-index fits one",
                            {"drift.detected": 1.0})
            return {"catalog_name": cat.name, "index_version": None, "drifted": True, "behaviour": None,
                    "exceeded": ["no published index"], "event_id": None, "mlflow_run_id": recorder.run_id,
                    "timing": recorder.timing()}
        emb = embed_stage(recorder, cat, cfg, current)
        with recorder.stage("drift") as stage:
            measured = measure_drift(cat, emb, current, cfg.drift, cfg.prune.level)
            report = measured.report.as_dict()
            stage.compute_s, stage.lineage = measured.compute_s, {"index": current.name}
            recorder.log_json(report, "drift.json")
        figures = {f"drift.{k}": v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        recorder.decide("drift", drift_verdict(report, cfg.drift), figures | {"drift.detected": float(measured.report.drifted)},
                        warn=measured.report.drifted)
        behaviour = _behaviour_stage(recorder, cat, cfg, logger)
        reasons = report["exceeded"] + (behaviour["exceeded"] if behaviour else [])
        event_id = None
        if reasons and emit:
            event_id = emit_drift(cat.name, catalog or DEMO_SOURCE, current.name, report, behaviour)
            logger.warning("%s for %s: %s (event %s)", DRIFT_EVENT, cat.name, "; ".join(reasons), event_id)
    return {"catalog_name": cat.name, "index_version": current.name, **report, "behaviour": behaviour, "event_id": event_id,
            "mlflow_run_id": recorder.run_id, "timing": recorder.timing()}


def _behaviour_stage(recorder: FlowRecorder, cat, cfg: RqsidConfig, logger) -> dict | None:
    """The champion on today's interactions after its training cut-off; None without a champion or interactions."""
    from tasks.champion import measure_behaviour
    from tasks.serving import champion_of, model_name

    champion = champion_of(recorder.tracker, model_name(cat.name)) if cat.interactions_file else None
    if champion is None:
        return None
    with recorder.stage("behaviour") as stage:
        measured = measure_behaviour(champion, cat.interactions_file, cfg.drift, cfg.generator.seed)
        stage.compute_s, stage.metrics = measured.compute_s, measured.metrics()
        stage.lineage = {"model_version": str(champion.version)}
        recorder.log_json(measured.as_dict(), "behaviour.json")
    logger.info("behaviour of champion version %s on %s newer interactions: Recall@10 %s (registered %s) %s",
                champion.version, measured.report.n_cases, measured.report.recall_at_10,
                measured.report.registered_recall_at_10, measured.report.note)
    return measured.as_dict()
