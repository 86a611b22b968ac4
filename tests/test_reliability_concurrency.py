"""Concurrent runs, with real processes and real servers:

- the per-catalog run lock (rqsid.locks) held by a real second process refuses a second re-index, retrain or
  drift watch of that catalog clearly (naming the holder), can be waited for with a bound, is released by the
  kernel when the holder is SIGKILLed, and a refused run writes nothing;
- two `rqsid nightly` on two catalogs of one home, and one in a second home, started seconds apart, all
  finish: one home's runs share its own Prefect server (which outlives each of them), the other home gets
  its own, and the MLflow sqlite store takes them all;
- the home's Prefect server dying mid-run ends that run with one line, and the next command marks it crashed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rqsid import RqsidError
from rqsid.home import ProjectHome
from rqsid.locks import catalog_lock, lock_path

HOLDER = """
import sys
from rqsid.locks import catalog_lock
with catalog_lock(sys.argv[1], sys.argv[2], what="holder"):
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin (or kills us)
"""


class Holder:
    """A separate Python process that holds the catalog's lock until released or killed."""

    def __init__(self, home_root, catalog: str):
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, str(home_root), catalog],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"  # blocks until the lock is taken, no sleep

    def release(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process.stdin.close()


@pytest.fixture
def home_root(tmp_path):
    return tmp_path / "home"


def test_second_run_is_refused_naming_the_holder(home_root):
    holder = Holder(home_root, "shop")
    try:
        running = rf"catalog shop is busy: holder holds it \(pid {holder.process.pid}, since 20"
        with pytest.raises(RqsidError, match=running), catalog_lock(home_root, "shop"):
            pass
        with catalog_lock(home_root, "other-shop"):  # other catalogs are not blocked
            pass
    finally:
        holder.release()
    with catalog_lock(home_root, "shop") as path:  # released: free again
        assert path == lock_path(home_root, "shop").resolve()


def test_bounded_wait_then_refuses(home_root):
    holder = Holder(home_root, "shop")
    try:
        with pytest.raises(RqsidError, match=r"\(waited 0.3 s\)"), catalog_lock(home_root, "shop", wait_s=0.3):
            pass
    finally:
        holder.release()
    with catalog_lock(home_root, "shop", wait_s=30):
        pass


def test_sigkilled_holder_leaves_no_stale_lock(home_root):
    holder = Holder(home_root, "shop")
    holder.kill()
    assert lock_path(home_root, "shop").exists()  # the file stays, the kernel lock does not
    with catalog_lock(home_root, "shop"):
        pass


def test_lock_is_reentrant_in_one_process(home_root):
    """nightly runs the re-index flow as a subflow in the same process."""
    with catalog_lock(home_root, "shop"), catalog_lock(home_root, "shop"):
        holder = subprocess.run([sys.executable, "-c", HOLDER, str(home_root), "shop"], input="", capture_output=True,
                                text=True, timeout=60)
        assert holder.returncode == 1 and f"pid {os.getpid()}" in holder.stderr
    with catalog_lock(home_root, "shop"):
        pass


def test_reindex_flow_refused_while_another_runs(tmp_path, prefect_api):
    """The real `rqsid reindex` (a CLI process) against the Prefect server, while another process holds the lock."""
    import pyarrow.parquet as pq

    from cli_runner import run_process
    from rqsid.synthetic import make_demo_catalog
    from rqsid.versioning import IndexRegistry

    catalog, _ = make_demo_catalog(n_items=200, seed=0)
    path = tmp_path / "shop.parquet"
    pq.write_table(catalog, path)
    home = tmp_path / "home"
    env = {**os.environ, **ProjectHome(home).environment(), "PREFECT_API_URL": prefect_api}
    holder = Holder(home, "shop")
    try:
        done = run_process("reindex", "--catalog", path, "--set", "quantizer.codebook_size=16", env=env)
    finally:
        holder.release()
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: catalog shop is busy: holder holds it (pid {holder.process.pid}" in done.stderr
    assert "Traceback" not in done.stderr
    index = IndexRegistry(home / "indexes" / "shop")
    assert not index.pointer.exists() and index.versions() == []


def test_retrain_and_drift_of_a_busy_catalog_are_refused(tmp_path, monkeypatch, capsys, prefect_api):
    """Through the CLI (before any server or flow run) and through the flows themselves (what deployment runs
    execute): each names the holder and writes nothing."""
    import pyarrow.parquet as pq

    from cli.main import main
    from flows.drift_watch import drift_watch
    from flows.retrain import retrain
    from rqsid.synthetic import make_demo_catalog
    from rqsid.versioning import IndexRegistry

    home = tmp_path / "home"
    monkeypatch.setenv("RQSID_HOME", str(home))
    catalog = tmp_path / "busy-shop.parquet"
    pq.write_table(make_demo_catalog(n_items=50, seed=0)[0], catalog)
    IndexRegistry(home / "indexes" / "busy-shop").publish("index-published", lambda folder: {})  # something to retrain on
    holder = Holder(home, "busy-shop")
    busy = f"catalog busy-shop is busy: holder holds it (pid {holder.process.pid}, since 20"
    try:
        for argv in (["drift", "--catalog", str(catalog)], ["retrain", "--catalog-name", "busy-shop"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {busy}") and len(err.strip().splitlines()) == 1, err
        with pytest.raises(RqsidError, match=re.escape(busy)):
            drift_watch(catalog=str(catalog), emit=False)
        with pytest.raises(RqsidError, match=re.escape(busy)):
            retrain(catalog_name="busy-shop")
    finally:
        holder.release()
    assert not (home / "data" / "embeddings").exists() and not (home / "data" / "generator").exists()


# ---------------------------------------------------------------- real nightly jobs, real servers, side by side


def _api_url(output: str) -> str:
    return re.search(r"prefect API: (\S+)", output).group(1)


def _flow_runs(home: Path) -> list[tuple[str, str]]:
    """(flow name, state type) of every flow run in the home's Prefect database (read after its server stopped)."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(home / "prefect" / "prefect.db")) as db:
        return db.execute("select flow.name, flow_run.state_type from flow_run join flow on flow.id = flow_run.flow_id "
                          "order by flow_run.created").fetchall()


def test_two_catalogs_in_one_home_and_a_second_home_run_side_by_side(tmp_path):
    """Issue 14's scenario: nightly jobs started seconds apart on their own home servers, none borrowing
    another home's; the first home's server outlives the job that started it while another job still uses it."""
    from real_process import Rqsid, nightly, shop_files, staging_folders, wait_until

    from tasks.home_server import running
    from tasks.services import port_in_use

    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    shop, garden = shop_files(tmp_path, "shop", seed=0), shop_files(tmp_path, "garden", seed=1)
    started = time.monotonic()
    a_shop = Rqsid(home_a, *nightly(*shop), pause_at="fit")  # will hold its staging folder (and its lease) a while
    jobs = [a_shop, Rqsid(home_b, *nightly(*shop))]  # the other home, seconds apart
    b_shop = jobs[1]
    try:
        a_shop.wait_for("fit")
        in_use = staging_folders(home_a)
        jobs.append(a_garden := Rqsid(home_a, *nightly(*garden)))  # the home's other catalog, while a_shop is mid-run
        out_a_garden = a_garden.finish()
        assert in_use and all(p.is_dir() for p in in_use)  # a_garden's start-up cleaned nothing a live job uses
        server_a = running(ProjectHome(home_a))
        assert server_a is not None  # a_garden ended, a_shop still holds a lease: the server stays
        a_shop.release("fit")
        out_a_shop, out_b_shop = a_shop.finish(), b_shop.finish()
    finally:
        for job in jobs:
            job.stop()
    wall_s = time.monotonic() - started
    assert _api_url(out_a_shop) == _api_url(out_a_garden) == server_a.api_url  # one server per home, shared
    assert _api_url(out_b_shop) != server_a.api_url  # the other home never borrows it
    for out in (out_a_shop, out_a_garden, out_b_shop):
        assert "database is locked" not in out and "Traceback" not in out
        assert re.search(r"generator \S+ v1: [^\n]*\n\s+promoted to champion", out), out[-2000:]
    for home in (home_a, home_b):  # after the last job of a home, its server stops
        wait_until(lambda home=home: running(ProjectHome(home)) is None, 60, f"{home.name}'s server to stop")
    wait_until(lambda: not port_in_use(server_a.port), 60, "home-a's port to be free")
    runs_a, runs_b = _flow_runs(home_a), _flow_runs(home_b)  # each home's database holds its own runs only
    assert sorted(name for name, _ in runs_a).count("nightly") == 2 and [n for n, _ in runs_b].count("nightly") == 1
    assert {state for _, state in runs_a + runs_b} == {"COMPLETED"}
    print(f"\nthree nightly jobs, two homes, side by side: {wall_s:.0f} s wall")


def test_prefect_server_lost_mid_run_is_one_line_and_the_next_command_marks_the_run_crashed(tmp_path):
    from real_process import TINY, Rqsid, shop_files

    from tasks.home_server import running

    home = tmp_path / "home"
    catalog, _ = shop_files(tmp_path, "shop")
    settings = [f"--set={s}" for s in TINY]
    run = Rqsid(home, "reindex", "--catalog", str(catalog), *settings, pause_at="catalog",
                env={"PREFECT_CLIENT_MAX_RETRIES": "1"})  # the default retries a lost API for about a minute
    try:
        run.wait_for("catalog")
        server = running(ProjectHome(home))
        os.killpg(server.server_pid, signal.SIGKILL)  # the server dies under the run (OOM killer, operator, ...)
        run.release("catalog")
        out = run.finish(rc=2)
    finally:
        run.stop()
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"the Prefect API {server.api_url} stopped answering mid-run" in errors[0], out[-3000:]
    assert "Traceback" not in out, out[-3000:]

    drift = Rqsid(home, "drift", "--catalog", str(catalog), "--no-emit", *settings)  # starts a new server, same database
    out = drift.finish()
    assert re.search(rf"recovered: pid {run.process.pid} .* 1 Prefect flow runs marked crashed", out), out[-3000:]
    assert ("reindex", "CRASHED") in _flow_runs(home) and ("reindex", "RUNNING") not in _flow_runs(home)
