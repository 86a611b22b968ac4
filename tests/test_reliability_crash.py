"""Crash safety: a real `rqsid reindex` subprocess is SIGKILLed while its version store holds a staged
(half-built) artifact; no partial index version becomes visible, the rerun completes, and its SIDs equal
those of an uninterrupted run in a fresh home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rqsid.home import ProjectHome
from rqsid.sids import read_sids
from rqsid.synthetic import make_demo_catalog
from rqsid.versioning import IndexRegistry, VersionStore

SETTINGS = ["quantizer.codebook_size=16", "quantizer.levels=3", "quantizer.epochs=40", "quantizer.early_stop_patience=40",
            "quantizer.hidden_dims=[64]", "quantizer.latent_dim=16", "gate.max_collision_rate=0.6",
            "prune.max_collision_rate=0.6", "orchestration.dask_workers=1"]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from tasks.services import free_port, start_prefect_server

    server = start_prefect_server(ProjectHome(tmp_path_factory.mktemp("prefect-server")), free_port(), timeout_s=150)
    try:
        yield server.api_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "shop.parquet"
    pq.write_table(make_demo_catalog(n_items=300, seed=0)[0], path)
    return path


def _reindex(home: Path, catalog: Path, api_url: str) -> subprocess.Popen:
    env = {**os.environ, **ProjectHome(home).environment(), "PREFECT_API_URL": api_url}
    argv = [sys.executable, "-m", "flows.cli", "reindex", "--catalog", str(catalog)]
    for setting in SETTINGS:
        argv += ["--set", setting]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parent.parent, start_new_session=True)


def _staged_tokenizer(home: Path) -> list[Path]:
    """Half-built tokenizer folders: VersionStore stages `.<version>.*` beside the final folder."""
    folder = home / "data" / "tokenizer"
    return list(folder.glob(".*")) if folder.is_dir() else []


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0, out[-3000:]
    return out


def test_sigkill_mid_run_publishes_nothing_and_rerun_matches(tmp_path, catalog_path, prefect_api):
    crashed, fresh = tmp_path / "crashed", tmp_path / "fresh"
    run = _reindex(crashed, catalog_path, prefect_api)
    deadline = time.monotonic() + 240
    while not _staged_tokenizer(crashed):  # poll the file system until the tokenizer is being built
        assert run.poll() is None, f"reindex ended (rc {run.returncode}) before the kill: {run.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no staged tokenizer within 240 s"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the whole job at once (CLI and its Dask workers), as an OOM kill or power loss would
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL

    index = IndexRegistry(crashed / "indexes" / "shop")
    assert not index.pointer.exists() and index.versions() == []  # no pointer, no partial version visible
    assert VersionStore(crashed / "data").versions("tokenizer") == []  # the staged folder is not a version
    assert _staged_tokenizer(crashed)  # it really was killed mid-build

    _finish(_reindex(crashed, catalog_path, prefect_api))  # the rerun completes
    _finish(_reindex(fresh, catalog_path, prefect_api))  # an uninterrupted run elsewhere

    resumed, clean = IndexRegistry(crashed / "indexes" / "shop"), IndexRegistry(fresh / "indexes" / "shop")
    assert resumed.current() == clean.current() is not None
    a, b = read_sids(resumed.current_path() / "sids.parquet"), read_sids(clean.current_path() / "sids.parquet")
    assert list(a.item_ids) == list(b.item_ids)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.dedup, b.dedup)
