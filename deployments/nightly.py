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


def nightly_deployment(catalog: str | None = None, interactions: str | None = None, config: RqsidConfig | None = None,
                       paused: bool | None = None):
    return nightly.to_deployment(
        NIGHTLY_NAME,
        schedule=Cron(NIGHTLY_CRON, timezone="UTC"),  # to_deployment(cron=..., timezone=...) raises TypeError
        parameters={"catalog": catalog, "interactions": interactions, "config": _parameter(config)},
        description="drift watch -> re-index -> retrain, every night at 02:00 UTC",
        tags=["rqsid"],
        paused=paused,
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


def run_nightly_now(catalog: str | None = None, interactions: str | None = None, config: RqsidConfig | None = None,
                    train: bool = True) -> dict[str, Any]:
    """One night now, as a run of the `nightly` deployment executed in this process (no worker or `rqsid serve`
    needed), so that the Prefect UI lists it with the scheduled nights. A missing deployment is registered
    paused (`rqsid serve` registers it again, on its schedule); an existing one keeps its defaults: this run
    gets this command's catalog and config as its parameters."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    parameters = {"catalog": catalog, "interactions": interactions, "config": _parameter(config), "train": train}
    with get_client(sync_client=True) as client:
        try:
            deployment_id = client.read_deployment_by_name(f"{nightly.name}/{NIGHTLY_NAME}").id
        except ObjectNotFound:
            deployment_id = nightly_deployment(catalog, interactions, config, paused=True).apply()
        # Pending, not Scheduled: a runner serving the deployment must not pick this run up as well
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters, state=Pending(),
                                                          tags=["manual"])
    return run_flow(nightly, flow_run=flow_run, parameters=parameters | {"config": config or RqsidConfig()})
