"""Shared fixtures: a project home and one Prefect server per test session, and the real data.

Unit modules build their own small tables (tests/synthetic_tables.py). Integration modules read the real
data in ../shared/data (RQSID_SHARED_DATA overrides it) and are marked `integration`; when the data is
absent they are skipped with the reason, unless RQSID_REQUIRE_DATA is set (CI sets it), which makes a
missing data folder a failure instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rqsid.home import ProjectHome, shared_data_dir

DATA_FIXTURES = {"shared_data", "beauty_dir", "scientific_dir"}


def pytest_collection_modifyitems(config, items):
    """A test that reads the real data is an integration test, and an integration test reads it: checked."""
    wrong = [item.nodeid for item in items
             if bool(DATA_FIXTURES & set(item.fixturenames)) != (item.get_closest_marker("integration") is not None)]
    if wrong:
        raise pytest.UsageError("mark exactly the tests that use the real data `integration`: " + ", ".join(wrong[:5]))


@pytest.fixture(autouse=True)
def torch_threads_restored(request):
    """torch's thread count is process-wide: a test (or its fixtures) that changes it must restore it."""
    before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    yield
    if before is not None:
        assert sys.modules["torch"].get_num_threads() == before, f"{request.node.nodeid} left torch's thread count changed"


@pytest.fixture(scope="session", autouse=True)
def project_home(tmp_path_factory) -> ProjectHome:
    """Every tool's state for the test session lives in one temporary home, offline."""
    return ProjectHome(tmp_path_factory.mktemp("rqsid-home")).activate(override=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.exists():
        message = f"real data not found at {path} (set RQSID_SHARED_DATA)"
        if os.environ.get("RQSID_REQUIRE_DATA"):
            pytest.fail(message + "; RQSID_REQUIRE_DATA is set, so integration tests must run")
        pytest.skip(message + ": integration test skipped")
    return path


@pytest.fixture(scope="session")
def beauty_dir(shared_data) -> Path:
    return shared_data / "amazon-beauty-2014"


@pytest.fixture(scope="session")
def scientific_dir(shared_data) -> Path:
    return shared_data / "amazon-scientific-2018"


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server for the whole session (started on first use), with PREFECT_API_URL pointing at
    it. Tests share its database, so each test names what it creates (catalogs, flow runs) uniquely."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.services import free_port, start_prefect_server

    server = start_prefect_server(ProjectHome(tmp_path_factory.mktemp("prefect-server")), free_port(), timeout_s=150)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send the queued run logs while the server is still up
    finally:
        server.stop()
