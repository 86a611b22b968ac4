"""Deployments registered with the session's Prefect server: the nightly cron schedule, and the drift
trigger whose event schedules a run of the retrain deployment (no worker needed to see it scheduled)."""

from __future__ import annotations

from deployments.nightly import NIGHTLY_CRON, RETRAIN_NAME, apply_all, nightly_deployment, retrain_deployment
from prefect_runs import runs_for
from rqsid.config import load_config


def test_deployments_are_built_with_a_utc_cron_and_a_drift_trigger():
    config = load_config(overrides={"generator.epochs": 3})
    nightly = nightly_deployment(catalog="/data/shop", config=config)
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (NIGHTLY_CRON, "UTC")
    assert nightly.parameters["catalog"] == "/data/shop" and nightly.parameters["config"]["generator"]["epochs"] == 3
    (trigger,) = retrain_deployment().triggers
    assert trigger.expect == {"rqsid.drift.detected"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "rqsid.catalog.*"}
    assert trigger.parameters["catalog_name"] == "{{ event.payload.catalog_name }}"
    assert trigger.parameters["config"] == {}  # no config: the flow's defaults


def test_drift_event_schedules_the_retrain_deployment(prefect_api):
    from prefect import get_client

    from flows.drift_watch import emit_drift

    ids = apply_all(catalog="/data/deployed-shop")
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment(ids["nightly"])
        assert [s.schedule.cron for s in nightly.schedules] == [NIGHTLY_CRON]
        assert nightly.schedules[0].schedule.timezone == "UTC"
        automations = client.read_automations_by_name("retrain on drift")
        assert automations and automations[0].trigger.expect == {"rqsid.drift.detected"}

    retrain_id = ids[RETRAIN_NAME]
    assert runs_for(retrain_id, "deployed-shop", timeout_s=0) == []
    report = {"drifted": True, "exceeded": ["new_share 0.200 > 0.1"], "new_share": 0.2}
    assert emit_drift("deployed-shop", "/data/deployed-shop", "index-0123456789abcdef", report)
    runs = runs_for(retrain_id, "deployed-shop")
    assert len(runs) == 1, "the drift event did not start the retrain deployment (once)"
    assert runs[0].parameters == {"catalog_name": "deployed-shop", "catalog": "/data/deployed-shop", "config": {}}
    assert runs[0].state.is_scheduled()
