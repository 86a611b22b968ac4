"""Local services: a Prefect server and the MLflow UI, bound to 127.0.0.1, state under the project home;
and the Prefect API a command runs its flows against (the configured one, else the home's own server,
tasks.home_server), after checking that configured remote services answer.

Each service runs as a child process in its own process group (servers spawn helpers), waits for
its health endpoint with a bounded timeout, and `.stop()` ends the whole group.
"""

from __future__ import annotations

import contextlib
import logging
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
HOME_SERVER = "home"  # what a process notes (rqsid.liveness) when it ran flows on its home's own server
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
            timeout_s: float, extra_env: dict[str, str] | None = None, ours=None) -> ServerHandle:
    """Start the server and wait until it answers; `ours()` (when given) must also confirm that the server
    answering is the one we started, not another that took the port meanwhile."""
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
    try:
        while not (_healthy(health_url, timeout_s=1.0) and (ours is None or ours())):
            if process.poll() is not None:
                raise RqsidError(f"{name} exited with code {process.returncode} before it was ready; "
                                 f"last log lines ({log_path}):\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RqsidError(f"{name} was not ready within {timeout_s:g} s; see {log_path}")
            time.sleep(_POLL_S)
    except BaseException:  # including SIGTERM turned into SystemExit: never leave a server behind
        handle.stop()
        raise
    return handle


# ---------------------------------------------------------------- Prefect


def start_prefect_server(home: ProjectHome, port: int = 4200, timeout_s: float = 120.0) -> ServerHandle:
    """`prefect server start` on 127.0.0.1:port with PREFECT_HOME in the home; ready when /api/health answers
    and the server reports this home as its PREFECT_HOME."""
    from tasks.home_server import serves_home

    url = f"http://{HOST}:{port}"
    command = [_executable("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    # the UI asks its API at 127.0.0.1:4200 unless told where this server listens
    handle = _launch("prefect server", command, home, port, f"{url}/api/health", url, timeout_s,
                     extra_env={"PREFECT_UI_API_URL": f"{url}/api"}, ours=lambda: serves_home(f"{url}/api", home))
    handle.api_url = f"{url}/api"
    return handle


def ensure_prefect_api(home: ProjectHome, port: int | None = None, timeout_s: float = 150.0) -> str:
    """The Prefect API this process runs flows against: PREFECT_API_URL when set (it must answer), else the
    home's own server (tasks.home_server: joined, or started; this process holds a lease on it until it exits
    or calls `home_server.leave`). Never a server that merely happens to listen on a port."""
    from tasks.home_server import join

    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not _healthy(f"{configured.rstrip('/')}/health"):
            raise RqsidError(f"PREFECT_API_URL={configured} does not answer; unset it to use this home's own server")
        return configured
    return join(home, port, timeout_s).api_url


# ---------------------------------------------------------------- the Prefect API a command runs flows against


@contextmanager
def prefect_api(config: RqsidConfig) -> Iterator[str]:
    """The configured Prefect API, else the home's own server, for the block. Before it: what dead processes
    of this home left open is closed (tasks.recovery). Flow runs started in the block are tagged with this
    process's token; if the API stops answering mid-run, the block ends in one RqsidError naming it."""
    from prefect import tags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rqsid.liveness import this_process
    from tasks.home_server import leave
    from tasks.recovery import recover

    home = ProjectHome.default().activate()
    preflight(config)
    configured = config.orchestration.prefect_api_url or os.environ.get("PREFECT_API_URL")
    started = time.perf_counter()
    api = config.orchestration.prefect_api_url or ensure_prefect_api(home)
    try:
        whose = "configured" if configured else f"this home's server, log in {home.root / 'server'}"
        print(f"prefect API: {api} ({whose}; ready in {time.perf_counter() - started:.1f} s)", flush=True)
        record = this_process(home.root)
        record.note("prefect", api if configured else HOME_SERVER)
        with _environment("PREFECT_API_URL", api), temporary_settings(updates={PREFECT_API_URL: api}):
            for line in recover(home, api if configured else HOME_SERVER):
                print(f"recovered: {line}", flush=True)
            try:
                with tags(record.prefect_tag), _console_for_users(api):
                    yield api
            except Exception as err:
                if _healthy(f"{api.rstrip('/')}/health"):
                    raise
                logging.raiseExceptions = False  # Prefect's log worker would print each failed send at exit
                record.left_open = True  # its flow runs are still Running: the next command marks them
                cause = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
                raise RqsidError(f"the Prefect API {api} stopped answering mid-run ({cause}); this run's flow runs "
                                 f"are marked crashed when the next rqsid command of {home.root} starts") from None
    finally:
        leave(home)


class _ConsoleForUsers(logging.Filter):
    """What Prefect's console handler shows during a command. A user error (RqsidError, e.g. a failed gate)
    that ends a task or flow run is its message line, not a traceback. While the Prefect API does not answer,
    Prefect's warnings and errors (each about the lost API, with tracebacks) are not shown: the command ends
    with one line that names the cause. The flow run's logs in Prefect keep everything (the API handler, on
    the `prefect.flow_runs` logger, sees each record before this handler on the root logger does)."""

    def __init__(self, api_url: str):
        super().__init__()
        self.health_url = f"{api_url.rstrip('/')}/health"
        self._checked_at, self._answers = 0.0, True

    def api_answers(self) -> bool:
        if time.monotonic() - self._checked_at > 1.0:  # one probe a second at most, and only for warnings
            self._answers, self._checked_at = _healthy(self.health_url, timeout_s=1.0), time.monotonic()
        return self._answers

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not self.api_answers():
            return False
        if record.exc_info and isinstance(record.exc_info[1], RqsidError):
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def _console_for_users(api_url: str) -> Iterator[None]:
    from prefect.logging.handlers import PrefectConsoleHandler

    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    console_filter = _ConsoleForUsers(api_url)
    for handler in consoles:
        handler.addFilter(console_filter)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(console_filter)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value for the block (child processes inherit it), restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


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
