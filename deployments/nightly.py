"""Deployments: the nightly job on a cron schedule, and retraining started by the drift event.

`nightly` runs drift watch -> re-index -> retrain every night at 02:00 UTC. `retrain-on-drift` has a
DeploymentEventTrigger on `rqsid.drift.detected`: the event's payload names the catalog (and its
source), and the run re-indexes that catalog before retraining. Retraining is idempotent (a generator
version is keyed by its index, interactions and config), so a drift event raised by the nightly run
itself costs no second training.
"""

from __future__ import annotations

from typing import Any

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.drift_watch import DRIFT_EVENT
from flows.nightly import nightly
from flows.retrain import retrain
from rqsid.config import RqsidConfig

NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_NAME = "nightly"
RETRAIN_NAME = "retrain-on-drift"


def _parameter(config: RqsidConfig | None) -> dict[str, Any]:
    """A deployment keeps its parameters as JSON; the flow validates them back into an RqsidConfig."""
    return config.model_dump(mode="json") if config is not None else {}


def drift_trigger(config: RqsidConfig | None = None) -> DeploymentEventTrigger:
    """Any catalog's drift event starts a retrain of that catalog (templated from the event payload)."""
    return DeploymentEventTrigger(
        name="retrain on drift",
        description=f"{DRIFT_EVENT} -> retrain the drifted catalog",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": "rqsid.catalog.*"},
        parameters={
            "catalog_name": "{{ event.payload.catalog_name }}",
            "catalog": "{{ event.payload.source }}",
            "config": _parameter(config),
        },
    )


def nightly_deployment(catalog: str | None = None, interactions: str | None = None, config: RqsidConfig | None = None):
    return nightly.to_deployment(
        NIGHTLY_NAME,
        schedule=Cron(NIGHTLY_CRON, timezone="UTC"),  # to_deployment(cron=..., timezone=...) raises TypeError
        parameters={"catalog": catalog, "interactions": interactions, "config": _parameter(config)},
        description="drift watch -> re-index -> retrain, every night at 02:00 UTC",
        tags=["rqsid"],
    )


def retrain_deployment(config: RqsidConfig | None = None):
    return retrain.to_deployment(RETRAIN_NAME, triggers=[drift_trigger(config)],
                                 description="retrain a catalog's generator when its drift event fires", tags=["rqsid"])


def all_deployments(catalog: str | None = None, interactions: str | None = None,
                    config: RqsidConfig | None = None) -> list[Any]:
    return [nightly_deployment(catalog, interactions, config), retrain_deployment(config)]


def apply_all(catalog: str | None = None, interactions: str | None = None,
              config: RqsidConfig | None = None) -> dict[str, str]:
    """Register the deployments (and the trigger's automation) with the Prefect API; no worker needed."""
    return {d.name: str(d.apply()) for d in all_deployments(catalog, interactions, config)}


def serve_all(catalog: str | None = None, interactions: str | None = None, config: RqsidConfig | None = None) -> None:
    """Serve both deployments from this process until interrupted (prefect.serve)."""
    from prefect import serve

    serve(*all_deployments(catalog, interactions, config))
