"""Real `rqsid` processes for the reliability tests: each in its own process group (so that a SIGKILL takes its
Dask workers too, as an OOM kill or a power loss would), all state in its home, output in a file, and stopped
at a named checkpoint (rqsid.checkpoints) when the test asks: deterministic kill points, no sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from cli_runner import REPO, cli_argv
from rqsid.home import ProjectHome

POLL_S = 0.05


def wait_until(condition, timeout_s: float, what: str, alive: subprocess.Popen | None = None) -> None:
    """Poll `condition()` until it holds; fail after timeout_s, or as soon as `alive` (a process) has ended."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the process ended (rc {alive.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:g} s")
        time.sleep(POLL_S)


class Rqsid:
    """`rqsid ARGS...` with RQSID_HOME=home; `pause_at` holds it at that checkpoint (or at each of a list)
    until `release()`."""

    def __init__(self, home: Path, *args: str, prefect_api: str | None = None, pause_at: str | list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.home = Path(home)
        self.checkpoints = self.home.parent / f"{self.home.name}-checkpoints-{time.monotonic_ns()}"
        self.log = self.checkpoints.with_suffix(".log")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RQSID_"))}
        environment |= ProjectHome(self.home).environment() | {"RQSID_CHECKPOINTS": str(self.checkpoints)}
        if prefect_api:
            environment["PREFECT_API_URL"] = prefect_api
        if pause_at:
            environment["RQSID_PAUSE_AT"] = pause_at if isinstance(pause_at, str) else ",".join(pause_at)
        environment |= env or {}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(cli_argv(*args), env=environment, stdout=out, stderr=subprocess.STDOUT,
                                            text=True, cwd=REPO, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def reached(self, point: str) -> bool:
        return (self.checkpoints / f"{point}.reached").exists()

    def wait_for(self, point: str, timeout_s: float = 300) -> None:
        try:
            wait_until(lambda: self.reached(point), timeout_s, f"checkpoint {point!r}", alive=self.process)
        except AssertionError as err:
            raise AssertionError(f"{err}; output:\n{self.output[-3000:]}") from None

    def release(self, point: str) -> None:
        (self.checkpoints / f"{point}.go").write_text("")

    def kill(self) -> None:
        """SIGKILL the whole process group (the CLI and its Dask workers)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def finish(self, timeout_s: float = 400, rc: int = 0) -> str:
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout_s:g} s:\n{self.output[-3000:]}") from None
        assert self.process.returncode == rc, f"rc {self.process.returncode}, expected {rc}:\n{self.output[-4000:]}"
        return self.output

    def stop(self) -> None:
        """Teardown: kill whatever is left of it."""
        if self.process.poll() is None:
            self.kill()


# A nightly chain in well under a minute on a busy 2-core machine, still with the real models and services.
TINY = ["quantizer.codebook_size=16", "quantizer.epochs=20", "quantizer.early_stop_patience=20",
        "quantizer.hidden_dims=[64]", "quantizer.latent_dim=16", "quantizer.warmup_epochs=2", "quantizer.kmeans_iters=10",
        "quantizer.threads=1", "gate.max_collision_rate=0.6", "prune.max_collision_rate=0.6",
        "generator.epochs=1", "generator.d_model=32", "generator.n_heads=2", "generator.n_layers=1",
        "generator.batch_size=128", "generator.valid_users=50", "generator.beam_size=10", "generator.eval_every=1",
        "generator.warmup_steps=5", "generator.max_train_minutes=1", "generator.threads=1", "orchestration.dask_workers=1"]


def shop_files(folder: Path, name: str, n_items: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic shop as canonical files: <name>.parquet (its stem names the catalog) and its interactions."""
    from rqsid.catalog import write_catalog, write_interactions
    from rqsid.synthetic import make_demo_catalog

    catalog, interactions = make_demo_catalog(n_items=n_items, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    return (write_catalog(catalog, folder / f"{name}.parquet"),
            write_interactions(interactions, folder / f"{name}-interactions.parquet"))


def nightly(catalog: Path, interactions: Path, *settings: str) -> list[str]:
    return ["nightly", "--catalog", str(catalog), "--interactions", str(interactions),
            *(f"--set={s}" for s in (*TINY, *settings))]


def staging_folders(home: Path) -> list[Path]:
    """Half-built artifacts: the version store stages `.<version>.<random>` folders beside the final ones."""
    return sorted(p for p in [*Path(home, "data").glob("*/.*"), *Path(home, "indexes").glob("*/versions/.*")]
                  if p.is_dir())


def record_of(home: Path, pid: int) -> dict:
    """The liveness record (rqsid.liveness) that process `pid` holds in the home."""
    import json

    for path in Path(home, "running").glob("*.json"):
        info = json.loads(path.read_text() or "{}")
        if info.get("pid") == pid:
            return info
    raise AssertionError(f"pid {pid} holds no record in {home}")
