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
from rqsid.sources import DEMO_ITEMS, DEMO_SOURCE, catalog_name_of
from tasks.common import registry
from tasks.index import measure_drift

DRIFT_EVENT = "rqsid.drift.detected"


def catalog_resource(catalog_name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"rqsid.catalog.{catalog_name}", "prefect.resource.name": catalog_name}


def emit_drift(catalog_name: str, source: str | None, index_version: str, report: dict) -> str | None:
    """Emit `rqsid.drift.detected` for the catalog; the payload carries what a retrain run needs."""
    from prefect.events import emit_event

    payload = {"catalog_name": catalog_name, "source": source, "index_version": index_version, "drift": report}
    event = emit_event(event=DRIFT_EVENT, resource=catalog_resource(catalog_name), payload=payload)
    return str(event.id) if event else None


@flow(name="drift_watch", log_prints=True)
def drift_watch(catalog: str | None = None, config: RqsidConfig | None = None, demo_items: int = DEMO_ITEMS,
                emit: bool = True) -> dict[str, Any]:
    """Measure drift of a catalog (None = the synthetic demo) against its published index."""
    cfg = config or RqsidConfig()
    logger = get_run_logger()
    recorder = FlowRecorder("drift_watch", catalog_name_of(catalog), cfg)
    with recorder.run():
        cat = catalog_stage(recorder, catalog, None, demo_items)
        current = registry(cat.name).current_path()
        if current is None:
            recorder.decide("drift", "no published index yet: nothing to compare with; the re-index fits one",
                            {"drift.detected": 1.0})
            return {"catalog_name": cat.name, "index_version": None, "drifted": True,
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
        event_id = None
        if measured.report.drifted and emit:
            event_id = emit_drift(cat.name, catalog or DEMO_SOURCE, current.name, report)
            logger.info("emitted %s for %s (event %s)", DRIFT_EVENT, cat.name, event_id)
    return {"catalog_name": cat.name, "index_version": current.name, **report, "event_id": event_id,
            "mlflow_run_id": recorder.run_id, "timing": recorder.timing()}
