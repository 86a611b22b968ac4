"""Crash safety, with real processes and real SIGKILL at deterministic points (rqsid.checkpoints):

- a real `rqsid nightly` killed inside each stage in turn (embed, fit, publish, the `current` move, train,
  register): each rerun closes what the killed one left open (MLflow runs KILLED, Prefect flow runs Crashed,
  staging folders removed) and the last publishes exactly what an uninterrupted nightly does;
- a staging folder that a live process fills is never removed, one whose process died is;
- a real `rqsid study` killed midway resumes: its rerun reads back the finished fits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from real_process import Rqsid, nightly, record_of, shop_files, staging_folders, wait_until

from cli_runner import REPO, cli_argv
from rqsid.embed import write_embeddings
from rqsid.home import ProjectHome
from rqsid.liveness import dead_processes
from rqsid.sids import read_sids
from rqsid.synthetic import make_demo_catalog
from rqsid.versioning import IndexRegistry, VersionStore

KILL_POINTS = ["embed", "fit", "publish", "current", "train", "register"]
PUBLISHED_AFTER = {"train", "register"}  # points past the move of `current`


def _mlflow(home: Path):
    from tasks.tracking import Tracker

    return Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts").client


def _run_statuses(home: Path) -> dict[str, int]:
    from collections import Counter

    from mlflow.entities import ViewType

    client = _mlflow(home)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return Counter(r.info.status for r in client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=5000))


def _flow_run_states(token: str) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"rqsid.owner:{token}"])))
    return [run.state.type.value for run in runs]


def _published(home: Path) -> dict:
    """What a nightly published: the current index version and its SIDs, the generator, the registered models."""
    index = IndexRegistry(home / "indexes" / "shop")
    sids = read_sids(index.current_path() / "sids.parquet")
    generators = VersionStore(home / "data").versions("generator")
    client = _mlflow(home)
    return {"index": index.current(), "item_ids": list(sids.item_ids), "codes": sids.codes.tolist(),
            "dedup": sids.dedup.tolist(), "generators": generators,
            "metrics": [json.loads((home / "data" / "generator" / g / "manifest.json").read_text())["metrics"]
                        for g in generators],
            "model_versions": sorted(int(v.version) for v in client.search_model_versions("name = 'shop-generator'")),
            "champion": client.get_model_version_by_alias("shop-generator", "champion").version}


def test_sigkill_at_every_stage_then_the_rerun_publishes_what_an_uninterrupted_run_does(tmp_path, prefect_api):
    catalog, interactions = shop_files(tmp_path / "input", "shop")
    crashed, fresh = tmp_path / "crashed", tmp_path / "fresh"

    def start(*pause_at: str) -> Rqsid:
        return Rqsid(crashed, *nightly(catalog, interactions), prefect_api=prefect_api, pause_at=list(pause_at))

    uninterrupted = Rqsid(fresh, *nightly(catalog, interactions), prefect_api=prefect_api)  # alongside the chain
    run, killed = start(KILL_POINTS[0]), []  # killed: (point, pid, token, staging folders it left)
    try:
        for point, after in zip(KILL_POINTS, [*KILL_POINTS[1:], None], strict=True):
            # the rerun imports while this run works, and waits at "ready" (before any lock, server or recovery)
            rerun = start("ready", after) if after else start("ready")
            run.wait_for(point)
            if killed:  # this run started its work after the previous kill: it closed what that one left open
                previous = killed[-1]
                assert f"recovered: pid {previous[1]} " in run.output, run.output[-3000:]
                assert not any(p.exists() for p in previous[3]), f"staging left by the kill at {previous[0]}"
            token = record_of(crashed, run.process.pid)["token"][0]
            run.kill()
            killed.append((point, run.process.pid, token, staging_folders(crashed)))
            published = IndexRegistry(crashed / "indexes" / "shop").current()
            assert (published is not None) == (point in PUBLISHED_AFTER), f"after the kill at {point}: {published}"
            rerun.wait_for("ready")
            rerun.release("ready")
            run = rerun
        assert [k[0] for k in killed if k[3]] == ["embed", "fit", "publish", "train"]  # killed mid-build, really
        out = run.finish()
        assert f"recovered: pid {killed[-1][1]} " in out
        uninterrupted.finish()
    finally:
        for job in (run, uninterrupted):
            job.stop()

    assert _published(crashed) == _published(fresh)  # exactly what an uninterrupted run publishes
    assert _published(crashed)["model_versions"] == [1]  # registered once, though killed right after registering
    assert staging_folders(crashed) == []
    statuses = _run_statuses(crashed)
    assert "RUNNING" not in statuses and statuses["KILLED"] >= len(KILL_POINTS), statuses
    for point, _, token, _ in killed:  # every killed process's flow runs end Crashed, none stays Running
        states = _flow_run_states(token)
        assert states and set(states) <= {"CRASHED", "COMPLETED"} and "CRASHED" in states, (point, states)


_STAGING_HOLDER = """
import sys
from rqsid.versioning import VersionStore
with VersionStore(sys.argv[1]).staging("tokenizer", "tokenizer-x") as folder:
    (folder / "half.bin").write_bytes(b"0" * 10)
    print(folder, flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin or kills us
"""


def test_only_staging_folders_of_dead_processes_are_cleaned(tmp_path):
    store = VersionStore(tmp_path / "data")
    holders = [subprocess.Popen([sys.executable, "-c", _STAGING_HOLDER, str(store.root)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    alive, doomed = (Path(h.stdout.readline().strip()) for h in holders)  # each blocks until its folder exists
    holders[1].send_signal(signal.SIGKILL)
    holders[1].wait(timeout=30)
    try:
        assert store.clean_staging() == [doomed]
        assert alive.is_dir() and not doomed.exists()  # the live one's folder stays, with its files
    finally:
        holders[0].stdin.close()
        assert holders[0].wait(timeout=30) == 0
    assert not alive.exists() and store.clean_staging() == []  # it cleaned up after itself


_RECORD_HOLDER = """
import sys
from rqsid.liveness import this_process
this_process(sys.argv[1]).note("mlflow", "sqlite:///x.db")
print("held", flush=True)
sys.stdin.read()
"""


def test_dead_processes_are_told_from_live_ones_by_their_records(tmp_path):
    holders = [subprocess.Popen([sys.executable, "-c", _RECORD_HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for holder in holders:
        assert holder.stdout.readline().strip() == "held"
    holders[1].send_signal(signal.SIGKILL)
    holders[1].wait(timeout=30)
    try:
        dead = list(dead_processes(tmp_path))
        assert [(d.info["pid"], d.info["mlflow"]) for d in dead] == [(holders[1].pid, ["sqlite:///x.db"])]
        assert len(list(dead_processes(tmp_path))) == 1  # not forgotten yet: the next command would retry
        dead[0].forget()
        assert list(dead_processes(tmp_path)) == []
        assert len(list((tmp_path / "running").glob("*.json"))) == 1  # the live one's record stays
    finally:
        holders[0].stdin.close()
        holders[0].wait(timeout=30)


# ---------------------------------------------------------------- the hourglass study resumes


def _start(home: Path, api_url: str, *args: str) -> subprocess.Popen:
    """`rqsid ARGS...` as its own process group, with all state in `home`."""
    env = {**os.environ, **ProjectHome(home).environment(), "PREFECT_API_URL": api_url}
    return subprocess.Popen(cli_argv(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, start_new_session=True)


def _kill_when(run: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL the whole job once `ready()` (polling the file system until the job is where the test wants it)."""
    wait_until(ready, 240, what, alive=run)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0, out[-3000:]
    return out


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
    uninterrupted = _study(fresh, study_inputs, prefect_api)  # alongside
    try:
        _kill_when(_study(crashed, study_inputs, prefect_api), lambda: len(_fits(crashed)) >= 2, "two finished fits")
        finished = len(_fits(crashed))
        assert not (crashed / "report" / "results.json").exists()  # it really died before the end

        out = _finish(_study(crashed, study_inputs, prefect_api))
        _finish(uninterrupted)
    finally:
        if uninterrupted.poll() is None:
            os.killpg(uninterrupted.pid, signal.SIGKILL)
    reused = int(out.split("reused from earlier runs: ")[1].split(" of ")[0])
    # 2 seeds on the real input and on 2 synthetic ones: what was finished was read back, not fitted again
    assert reused == finished and "of 6 fits" in out
    assert len(_fits(crashed)) == 6
    assert _layer_rows(crashed) == _layer_rows(fresh)  # resuming changes nothing in the numbers
