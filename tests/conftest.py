"""Shared fixtures: the real data in ../shared/data, and a project home per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rqsid.home import ProjectHome, shared_data_dir


@pytest.fixture(scope="session", autouse=True)
def project_home(tmp_path_factory) -> ProjectHome:
    """Every tool's state for the test session lives in one temporary home, offline."""
    home = ProjectHome(tmp_path_factory.mktemp("rqsid-home")).activate(override=True)
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.exists():
        pytest.fail(f"real data not found at {path}; set RQSID_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def beauty_dir(shared_data) -> Path:
    return shared_data / "amazon-beauty-2014"


@pytest.fixture(scope="session")
def scientific_dir(shared_data) -> Path:
    return shared_data / "amazon-scientific-2018"


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server per test module, with PREFECT_API_URL pointing at it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rqsid.home import ProjectHome
    from tasks.services import free_port, start_prefect_server

    # a server of this module's own (its database starts empty), on a free local port
    server = start_prefect_server(ProjectHome(tmp_path_factory.mktemp("prefect-server")), free_port(), timeout_s=150)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send the queued run logs while the server is still up
    finally:
        server.stop()
