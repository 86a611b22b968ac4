"""Local services with real servers, real processes and real signals: `rqsid server`, `rqsid serve` and
`rqsid ui` stop their servers on SIGTERM and SIGINT (the port is free afterwards), a home's server is shared by
that home's commands and by no one else, and a port held by another program is a clear error."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request

import pytest
from real_process import Rqsid, wait_until

from rqsid import RqsidError
from rqsid.home import ProjectHome
from rqsid.locks import open_lock_file, try_lock
from tasks.home_server import running, server_dir, serves_home
from tasks.services import ensure_prefect_api, free_port, port_in_use, start_mlflow_ui, start_prefect_server
from tasks.tracking import Tracker


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture()
def home(tmp_path) -> ProjectHome:
    return ProjectHome(tmp_path / "home").ensure()


def _stopped(job: Rqsid, how: signal.Signals) -> None:
    job.process.send_signal(how)
    assert job.finish(timeout_s=60) is not None  # exit code 0


def test_server_serve_and_ui_stop_their_servers_on_sigterm_and_sigint(tmp_path):
    home = tmp_path / "home"
    experiment_id = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts").experiment("scientific")
    prefect_port, ui_port = free_port(), free_port()
    jobs = [Rqsid(home, "server", "--port", str(prefect_port)), Rqsid(home, "ui", "--port", str(ui_port))]
    server, ui = jobs
    try:
        wait_until(lambda: "Prefect server of" in server.output, 180, "`rqsid server` ready", alive=server.process)
        jobs.append(serve := Rqsid(home, "serve"))  # after the server: it joins that one
        wait_until(lambda: "Your deployments are being served" in serve.output, 180, "`rqsid serve` ready", alive=serve.process)
        wait_until(lambda: "MLflow UI:" in ui.output, 180, "`rqsid ui` ready", alive=ui.process)
        api = f"http://127.0.0.1:{prefect_port}/api"
        assert f"prefect API: {api} (this home's server" in serve.output  # serve joined the server's home server
        assert _get_json(f"{api}/admin/version") and (home / "prefect" / "prefect.db").exists()
        found = _get_json(f"http://127.0.0.1:{ui_port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=scientific")
        assert found["experiment"]["experiment_id"] == experiment_id  # the UI serves this home's store

        _stopped(serve, signal.SIGTERM)
        assert running(ProjectHome(home)) is not None  # `rqsid server` still holds a lease: the server stays
        _stopped(server, signal.SIGTERM)  # the last user gone: the home's server stops
        _stopped(ui, signal.SIGINT)
        wait_until(lambda: not port_in_use(prefect_port), 60, "the Prefect port to be free")
        wait_until(lambda: not port_in_use(ui_port), 60, "the MLflow UI port to be free")
        assert running(ProjectHome(home)) is None and not (server_dir(ProjectHome(home)) / "prefect.json").exists()
    finally:
        for job in jobs:
            job.stop()


def test_configured_api_is_used_and_another_homes_server_never_joined(home, tmp_path, monkeypatch, prefect_api):
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    assert ensure_prefect_api(home) == prefect_api  # configured: used as it is, nothing started
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(RqsidError, match="PREFECT_API_URL=http://127.0.0.1:9/api does not answer"):
        ensure_prefect_api(home)

    # a home whose record names a live supervisor and a port where another home's server answers
    port = int(prefect_api.rsplit(":", 1)[1].split("/")[0])
    folder = server_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prefect.json").write_text(json.dumps({"api_url": prefect_api, "port": port, "server_pid": 0}))
    alive = open_lock_file(folder / "supervisor.lock")
    try:
        assert try_lock(alive)  # as a live supervisor would
        assert not serves_home(prefect_api, home) and running(home) is None  # not this home's: never joined
    finally:
        os.close(alive)
    with pytest.raises(RqsidError, match=f"port {port} .* already in use by a healthy server"):
        start_prefect_server(home, port=port)


def test_port_held_by_another_program_is_a_clear_error(home):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RqsidError, match=f"port {port} on 127.0.0.1 is already in use by another program"):
            start_prefect_server(home, port=port)
        with pytest.raises(RqsidError, match="already in use by another program"):
            start_mlflow_ui(home, port=port)
