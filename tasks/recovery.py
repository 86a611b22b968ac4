"""What dead rqsid processes of a home left behind, put right when the next command starts.

A process killed mid-run (SIGKILL, OOM, power loss) cannot close its runs: its MLflow runs stay RUNNING,
its Prefect flow runs `Running`, and the artifact it was building stays a half-filled staging folder.
Each process holds a record in the home while it lives (rqsid.liveness) and tags the runs it opens with
its token; `recover` finds the records of dead processes, ends their MLflow runs as KILLED and marks
their flow runs Crashed, and removes staging folders whose process is gone (never one a live process is
filling: those are locked, rqsid.versioning).
"""

from __future__ import annotations

from rqsid.home import ProjectHome
from rqsid.liveness import OWNER_TAG, DeadProcess, dead_processes
from rqsid.versioning import VersionStore

UNFINISHED_FLOW_STATES = ("RUNNING", "PENDING", "SCHEDULED", "PAUSED", "CANCELLING")


def recover(home: ProjectHome, prefect_api: str) -> list[str]:
    """Close what the home's dead processes left open; one line per thing done. `prefect_api` is the API this
    process uses (or "home" for the home's own server): flow runs are marked on it when the dead process
    used the same one (the caller's Prefect settings point at it)."""
    lines = []
    for dead in dead_processes(home.root):
        try:
            killed = sum(kill_mlflow_runs(uri, dead.token) for uri in dead.info.get("mlflow", []))
            crashed = crash_flow_runs(dead) if prefect_api in dead.info.get("prefect", []) else 0
        except Exception as err:  # reported; its record stays for the next command to retry
            lines.append(f"could not close what {dead.describe()} left open ({type(err).__name__}: {err}); "
                         "the next command tries again")
            continue
        dead.forget()
        if killed or crashed:
            lines.append(f"{dead.describe()} died: {crashed} Prefect flow runs marked crashed, "
                         f"{killed} MLflow runs ended as KILLED")
    removed = clean_staging(home)
    if removed:
        lines.append(f"removed {len(removed)} half-built staging folders of dead processes: "
                     + ", ".join(p.name for p in removed[:5]))
    return lines


def clean_staging(home: ProjectHome) -> list:
    stores = [VersionStore(home.data)] + [VersionStore(p) for p in sorted(home.indexes.glob("*")) if p.is_dir()]
    return [path for store in stores for path in store.clean_staging()]


def kill_mlflow_runs(tracking_uri: str, token: str) -> int:
    """End the RUNNING MLflow runs tagged with a dead process's token as KILLED."""
    from mlflow.entities import ViewType

    from tasks.tracking import Tracker

    client = Tracker(tracking_uri).client
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return 0
    runs = client.search_runs(experiments, f"tags.`{OWNER_TAG}` = '{token}' and attributes.status = 'RUNNING'",
                              run_view_type=ViewType.ALL, max_results=10_000)
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def crash_flow_runs(dead: DeadProcess) -> int:
    """Mark the unfinished flow runs tagged with a dead process's token Crashed (on the current Prefect API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    states = FlowRunFilterStateType(any_=[StateType(s) for s in UNFINISHED_FLOW_STATES])
    unfinished = FlowRunFilter(tags=FlowRunFilterTags(all_=[dead.prefect_tag]), state=FlowRunFilterState(type=states))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=unfinished)
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message=f"{dead.describe()} died mid-run"), force=True)
    return len(runs)
