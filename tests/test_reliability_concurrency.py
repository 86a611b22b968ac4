"""Concurrent runs: the per-catalog run lock (rqsid.locks) held by a real second process refuses a second
re-index clearly (naming the holder's pid), can be waited for with a bound, is released by the kernel when
the holder is SIGKILLed, and a refused re-index writes nothing to the index store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rqsid import RqsidError
from rqsid.home import ProjectHome
from rqsid.locks import catalog_lock, lock_path

HOLDER = """
import sys
from rqsid.locks import catalog_lock
with catalog_lock(sys.argv[1], sys.argv[2]):
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
        running = rf"another re-index of catalog shop is running \(pid {holder.process.pid}, since 20"
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
        done = run_process("reindex", "--catalog", path, "--set", "quantizer.epochs=2", env=env)
    finally:
        holder.release()
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: another re-index of catalog shop is running (pid {holder.process.pid}" in done.stderr
    assert "Traceback" not in done.stderr
    index = IndexRegistry(home / "indexes" / "shop")
    assert not index.pointer.exists() and index.versions() == []
