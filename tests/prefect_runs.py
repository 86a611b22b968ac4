"""Reading what a Prefect automation did: the flow runs a deployment got for one catalog; an event's payload."""

from __future__ import annotations

import time


def runs_for(deployment_id, catalog_name: str, timeout_s: float = 60.0) -> list:
    """Flow runs of the deployment whose `catalog_name` parameter is `catalog_name`, once there is one (the
    automation reacts asynchronously); an empty list when none came within the timeout. Other tests share the
    server and the deployment, so runs are told apart by catalog."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
            mine = [run for run in runs if run.parameters.get("catalog_name") == catalog_name]
            if mine or time.monotonic() > deadline:
                return mine
            time.sleep(0.2)


def event_payload(event_id: str, timeout_s: float = 30.0) -> dict | None:
    """The payload of an emitted event, once the server has stored it (events are written asynchronously)."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(EventFilter(id=EventIDFilter(id=[event_id])), limit=1)
            if page.events or time.monotonic() > deadline:
                return page.events[0].payload if page.events else None
            time.sleep(0.2)
