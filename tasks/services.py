"""Local services: a Prefect server and the MLflow UI, bound to 127.0.0.1, state under the project home;
and the Prefect API a command runs its flows against, after checking that configured remote services answer.

Each service runs as a child process in its own process group (servers spawn helpers), waits for
its health endpoint with a bounded timeout, and `.stop()` ends the whole group.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rqsid import RqsidError
from rqsid.config import RqsidConfig
from rqsid.home import ProjectHome

HOST = "127.0.0.1"
_POLL_S = 0.25


@dataclass
class ServerHandle:
    name: str
    url: str  # base URL, e.g. http://127.0.0.1:4200
    health_url: str
    process: subprocess.Popen
    log_path: Path
    api_url: str = ""  # Prefect: <url>/api
    _stopped: bool = field(default=False, repr=False)

    def healthy(self) -> bool:
        return _healthy(self.health_url)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL whatever is left after `timeout_s`."""
        if self._stopped:
            return
        self._stopped = True
        _signal_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            self.process.poll()  # reap the leader so the group can empty
            time.sleep(_POLL_S)
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- helpers


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the virtualenv's own CLI
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RqsidError(f"the {name!r} command is not installed in this environment")
    return found


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _launch(name: str, command: list[str], home: ProjectHome, port: int, health_url: str, url: str,
            timeout_s: float, extra_env: dict[str, str] | None = None) -> ServerHandle:
    if port_in_use(port):
        what = "a healthy server" if _healthy(health_url) else "another program"
        raise RqsidError(f"cannot start {name}: port {port} on {HOST} is already in use by {what}")
    home.ensure()
    log_path = home.root / "logs" / f"{name.replace(' ', '-')}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **home.environment(), **(extra_env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home.root,
                                   start_new_session=True)
    handle = ServerHandle(name, url, health_url, process, log_path)
    deadline = time.monotonic() + timeout_s
    while not _healthy(health_url, timeout_s=1.0):
        if process.poll() is not None:
            handle.stop()
            raise RqsidError(f"{name} exited with code {process.returncode} before it was ready; "
                             f"last log lines ({log_path}):\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            handle.stop()
            raise RqsidError(f"{name} was not ready within {timeout_s:g} s; see {log_path}")
        time.sleep(_POLL_S)
    return handle


# ---------------------------------------------------------------- Prefect


def start_prefect_server(home: ProjectHome, port: int = 4200, timeout_s: float = 120.0) -> ServerHandle:
    """`prefect server start` on 127.0.0.1:port with PREFECT_HOME in the home; ready when /api/health answers."""
    url = f"http://{HOST}:{port}"
    command = [_executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    handle = _launch("prefect server", command, home, port, f"{url}/api/health", url, timeout_s)
    handle.api_url = f"{url}/api"
    return handle


_STARTED: list[ServerHandle] = []


def _stop_started() -> None:
    while _STARTED:
        _STARTED.pop().stop()


atexit.register(_stop_started)


def ensure_prefect_api(home: ProjectHome, port: int = 4200, timeout_s: float = 120.0) -> str:
    """A healthy Prefect API URL: PREFECT_API_URL if it answers, else a server on 127.0.0.1:port (or a free
    port when that one is taken), started now and stopped when this process exits. Sets PREFECT_API_URL."""
    candidates = [os.environ.get("PREFECT_API_URL"), f"http://{HOST}:{port}/api"]
    for api_url in filter(None, candidates):
        if _healthy(f"{api_url.rstrip('/')}/health"):
            os.environ["PREFECT_API_URL"] = api_url
            return api_url
    handle = start_prefect_server(home, port if not port_in_use(port) else free_port(), timeout_s)
    _STARTED.append(handle)
    os.environ["PREFECT_API_URL"] = handle.api_url
    return handle.api_url


# ---------------------------------------------------------------- the Prefect API a command runs flows against


@contextmanager
def prefect_api(config: RqsidConfig) -> Iterator[str]:
    """The configured Prefect API, else a healthy local server (started now, stopped at exit)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = ProjectHome.default().activate()
    preflight(config)
    if config.orchestration.prefect_api_url:
        os.environ["PREFECT_API_URL"] = config.orchestration.prefect_api_url
    started = time.perf_counter()
    api = ensure_prefect_api(home)
    print(f"prefect API: {api} (ready in {time.perf_counter() - started:.1f} s)", flush=True)
    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield api


def preflight(config: RqsidConfig, timeout_s: float = 5.0) -> None:
    """Configured remote services must answer now: a clear RqsidError within seconds, not a retry hang (MLflow's
    HTTP client retries for minutes) or a silent fall-back to a local Prefect server."""
    orch = config.orchestration
    checks = []
    if orch.prefect_api_url:
        checks.append(("orchestration.prefect_api_url", orch.prefect_api_url, f"{orch.prefect_api_url.rstrip('/')}/health"))
    if orch.mlflow_tracking_uri and orch.mlflow_tracking_uri.startswith(("http://", "https://")):
        mlflow_health = f"{orch.mlflow_tracking_uri.rstrip('/')}/health"
        checks.append(("orchestration.mlflow_tracking_uri", orch.mlflow_tracking_uri, mlflow_health))
    for name, value, url in checks:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status == 200:
                    continue
            problem = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            problem = str(getattr(err, "reason", err))
        raise RqsidError(f"{name}={value} does not answer ({url}: {problem}, {timeout_s:g} s limit)")
    if orch.dask_address:
        parts = urlsplit(orch.dask_address if "://" in orch.dask_address else f"tcp://{orch.dask_address}")
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=timeout_s).close()
        except (OSError, TypeError, ValueError) as err:
            raise RqsidError(f"orchestration.dask_address={orch.dask_address}: no scheduler answers ({err}, "
                             f"{timeout_s:g} s limit)") from None


# ---------------------------------------------------------------- MLflow


def start_mlflow_ui(home: ProjectHome, port: int = 5000, timeout_s: float = 120.0) -> ServerHandle:
    """`mlflow server --workers 1` on 127.0.0.1:port over the home's sqlite store and artifacts."""
    home.ensure()
    url = f"http://{HOST}:{port}"
    command = [
        _executable("mlflow"), "server",
        "--backend-store-uri", home.mlflow_uri,
        "--default-artifact-root", home.mlflow_artifacts.as_uri(),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]
    return _launch("mlflow ui", command, home, port, f"{url}/health", url, timeout_s)


def start_model_server(home: ProjectHome, model_uri: str, port: int, timeout_s: float = 180.0) -> ServerHandle:
    """`mlflow models serve -m MODEL_URI --env-manager local` on 127.0.0.1:port (one worker), over the home's
    MLflow store; ready when /ping answers. `POST <url>/invocations` predicts."""
    url = f"http://{HOST}:{port}"
    command = [_executable("mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", HOST, "-p", str(port), "-w", "1"]
    # it starts `uvicorn` by name: this environment's own, even when the environment is not activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return _launch("mlflow model server", command, home, port, f"{url}/ping", url, timeout_s, {"PATH": path})
