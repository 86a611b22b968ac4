"""The nightly job: drift watch (catalog and behaviour) -> re-index -> retrain.

The re-index reuses the published tokenizer while drift stays under the thresholds (unchanged items
keep their SIDs; only new and changed items are embedded and encoded) and refits it when drift is
detected. Retraining reuses a stored generator when neither the index nor the interactions changed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import FlowRecorder
from flows.drift_watch import drift_watch
from flows.reindex import reindex
from flows.retrain import retrain
from rqsid.config import RqsidConfig
from rqsid.home import ProjectHome
from rqsid.locks import catalog_lock
from rqsid.sources import DEMO_ITEMS, catalog_name_of


@flow(name="nightly", log_prints=True)
def nightly(catalog: str | None = None, interactions: str | None = None, config: RqsidConfig | None = None,
            demo_items: int = DEMO_ITEMS, train: bool = True) -> dict[str, Any]:
    cfg = config or RqsidConfig()
    recorder = FlowRecorder("nightly", catalog_name_of(catalog), cfg)
    # one lock for the whole chain (its flows re-enter it); the three flows' MLflow runs nest under this one, and
    # their timing and decisions count here
    with catalog_lock(ProjectHome.default().root, catalog_name_of(catalog), what="nightly"), recorder.run():
        drift = drift_watch(catalog=catalog, config=cfg, demo_items=demo_items, interactions=interactions)
        index = reindex(catalog=catalog, interactions=interactions, config=cfg,
                        refit=True if drift["index_version"] is None else bool(drift["drifted"]), demo_items=demo_items)
        model = None
        if train:
            model = retrain(catalog_name=index["catalog_name"], index_version=index["index_version"],
                            interactions=interactions, config=cfg)
        recorder.lineage["index"] = index["index_version"]
    return {"drift": drift, "reindex": index, "retrain": model, "mlflow_run_id": recorder.run_id,
            "timing": recorder.timing()}
