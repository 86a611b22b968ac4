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
