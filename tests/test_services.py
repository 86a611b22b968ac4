"""A real Prefect server and a real MLflow server, started and stopped in a temporary home (bounded time)."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from rqsid import RqsidError
from rqsid.home import ProjectHome
from tasks.services import ensure_prefect_api, free_port, port_in_use, start_mlflow_ui, start_prefect_server
from tasks.tracking import Tracker


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture()
def home(tmp_path) -> ProjectHome:
    return ProjectHome(tmp_path / "home").ensure()


def test_prefect_server_starts_serves_and_stops(home, monkeypatch):
    port = free_port()
    server = start_prefect_server(home, port=port, timeout_s=150)
    try:
        assert server.api_url == f"http://127.0.0.1:{port}/api"
        assert _get_json(f"{server.api_url}/health") is True
        assert _get_json(f"{server.api_url}/admin/version")  # the real API, not just a socket
        assert (home.prefect / "prefect.db").exists()  # its state lives in the project home
        with pytest.raises(RqsidError, match=f"port {port} .* already in use by a healthy server"):
            start_prefect_server(home, port=port)
        monkeypatch.setenv("PREFECT_API_URL", server.api_url)
        assert ensure_prefect_api(home) == server.api_url  # reused, nothing new started
    finally:
        server.stop()
    assert not port_in_use(port)
    assert server.process.poll() is not None


def test_port_held_by_another_program_is_a_clear_error(home):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(RqsidError, match=f"port {port} on 127.0.0.1 is already in use by another program"):
            start_prefect_server(home, port=port)
        with pytest.raises(RqsidError, match="already in use by another program"):
            start_mlflow_ui(home, port=port)


def test_mlflow_ui_serves_the_home_store(home, monkeypatch):
    monkeypatch.setenv("RQSID_HOME", str(home.root))
    experiment_id = Tracker().experiment("scientific")  # written to the home's sqlite store
    port = free_port()
    with start_mlflow_ui(home, port=port, timeout_s=150) as ui:
        found = _get_json(f"{ui.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=scientific")
        assert found["experiment"]["experiment_id"] == experiment_id
        assert found["experiment"]["artifact_location"] == (home.mlflow_artifacts / "scientific").as_uri()
    assert not port_in_use(port)
