"""Crash safety: a real `rqsid reindex` subprocess is SIGKILLed while its version store holds a staged
(half-built) artifact; no partial index version becomes visible, the rerun completes, and its SIDs equal
those of an uninterrupted run in a fresh home. Likewise a real `rqsid study` killed midway resumes: its
rerun reads back the fits that were finished and its results equal an uninterrupted study's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_runner import REPO, cli_argv
from rqsid.embed import write_embeddings
from rqsid.home import ProjectHome
from rqsid.sids import read_sids
from rqsid.synthetic import make_demo_catalog
from rqsid.versioning import IndexRegistry, VersionStore

SETTINGS = ["quantizer.codebook_size=16", "quantizer.levels=3", "quantizer.epochs=40", "quantizer.early_stop_patience=40",
            "quantizer.hidden_dims=[64]", "quantizer.latent_dim=16", "gate.max_collision_rate=0.6",
            "prune.max_collision_rate=0.6", "orchestration.dask_workers=1"]


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "shop.parquet"
    pq.write_table(make_demo_catalog(n_items=300, seed=0)[0], path)
    return path


def _start(home: Path, api_url: str, *args: str) -> subprocess.Popen:
    """`rqsid ARGS...` as its own process group, with all state in `home`."""
    env = {**os.environ, **ProjectHome(home).environment(), "PREFECT_API_URL": api_url}
    return subprocess.Popen(cli_argv(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, start_new_session=True)


def _reindex(home: Path, catalog: Path, api_url: str) -> subprocess.Popen:
    return _start(home, api_url, "reindex", "--catalog", str(catalog), *(f"--set={s}" for s in SETTINGS))


def _kill_when(run: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL the whole job (CLI and its Dask workers, as an OOM kill or power loss would) once `ready()`."""
    deadline = time.monotonic() + 240
    while not ready():  # poll the file system until the job is where the test wants it
        assert run.poll() is None, f"the run ended (rc {run.returncode}) before the kill: {run.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within 240 s"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL


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
    _kill_when(_reindex(crashed, catalog_path, prefect_api), lambda: _staged_tokenizer(crashed), "staged tokenizer")

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


# ---------------------------------------------------------------- the hourglass study resumes


STUDY_SETTINGS = ["quantizer.codebook_size=8", "quantizer.epochs=40", "quantizer.early_stop_patience=40",
                  "quantizer.hidden_dims=[32]", "quantizer.latent_dim=8", "quantizer.kmeans_iters=10"]


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A 300-item catalog folder and 32-d embeddings of its items (no text model: the study reads them)."""
    folder = tmp_path_factory.mktemp("study-shop")
    catalog = make_demo_catalog(n_items=300, seed=1)[0]
    pq.write_table(catalog, folder / "catalog.parquet")
    X = np.random.default_rng(0).standard_normal((catalog.num_rows, 32)).astype(np.float32)
    return folder, write_embeddings(folder.parent / "study-embeddings.parquet", catalog.column("item_id").to_pylist(), X)


def _study(home: Path, inputs: tuple[Path, Path], api_url: str) -> subprocess.Popen:
    folder, embeddings = inputs
    return _start(home, api_url, "study", "--dataset", str(folder), "--embeddings", str(embeddings), "--quick",
                  "--no-generator", "--methods", "rqvae", "--out", str(home / "report"), *(f"--set={s}" for s in STUDY_SETTINGS))


def _fits(home: Path) -> list[Path]:
    return VersionStore(home / "data").versions("study-fit")


def _layer_rows(home: Path) -> list[dict]:
    """The measured rows of a finished study, without the seconds each fit took."""
    saved = json.loads((home / "report" / "results.json").read_text())
    rows = [row for part in ("tokenizers", "uniformity") for row in saved[part]["rows"]]
    return [{key: value for key, value in row.items() if key != "fit_s"} for row in rows]


def test_study_killed_midway_resumes_from_its_finished_fits(tmp_path, study_inputs, prefect_api):
    crashed, fresh = tmp_path / "crashed", tmp_path / "fresh"
    _kill_when(_study(crashed, study_inputs, prefect_api), lambda: len(_fits(crashed)) >= 2, "two finished fits")
    finished = len(_fits(crashed))
    assert not (crashed / "report" / "results.json").exists()  # it really died before the end

    out = _finish(_study(crashed, study_inputs, prefect_api))
    reused = int(out.split("reused from earlier runs: ")[1].split(" of ")[0])
    # 2 seeds on the real input and on 2 synthetic ones: what was finished was read back, not fitted again
    assert reused == finished and "of 6 fits" in out
    assert len(_fits(crashed)) == 6
    _finish(_study(fresh, study_inputs, prefect_api))
    assert _layer_rows(crashed) == _layer_rows(fresh)  # resuming changes nothing in the numbers
