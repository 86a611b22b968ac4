"""The home's own Prefect server: started for one project home, used by that home's rqsid processes only.

Its files live under `<home>/server/`:

  prefect.json     where it runs ({"api_url", "port", "server_pid", "supervisor_pid", "prefect_home"}), written
                   once it is ready and removed before it stops
  users.lock       every process that uses the server holds a shared lock on it: its lease
  start.lock       held while a process joins, so that two processes never start a server each
  supervisor.lock  held by the supervisor for as long as it lives
  port             the port it last ran on, tried first next time (the UI's address stays the same)

A supervisor process (`python -m tasks.home_server HOME PORT`, in its own session) starts `prefect server
start`, writes prefect.json, then waits until no lease is left (it can lock users.lock exclusively) and
stops the server. A user that ends, even by SIGKILL, drops its lease with it (the kernel releases fcntl
locks), so the server outlives each user while any other still uses it and stops after the last one,
however that one ended. A process joins only the server that its own home's prefect.json names, and only
after that server reports this home's PREFECT_HOME (`/api/admin/settings`): another home's server, or
anything else listening on the port, is never used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rqsid import RqsidError
from rqsid.home import ProjectHome
from rqsid.jsonio import write_json_atomic
from rqsid.locks import file_lock, open_lock_file, try_lock, wait_for_lock

DEFAULT_PORT = 4200
POLL_S = 0.2


@dataclass(frozen=True)
class HomeServer:
    api_url: str
    port: int
    server_pid: int
    started: bool  # started by this process (else joined)

    @property
    def url(self) -> str:
        return self.api_url.removesuffix("/api")


def server_dir(home: ProjectHome) -> Path:
    return home.root / "server"


def serves_home(api_url: str, home: ProjectHome, timeout_s: float = 5.0) -> bool:
    """True when the server at api_url answers and keeps its state in this home (its PREFECT_HOME)."""
    try:
        with urllib.request.urlopen(f"{api_url}/admin/settings", timeout=timeout_s) as response:
            settings = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    reported = settings.get("home") if isinstance(settings, dict) else None
    return reported is not None and Path(reported).resolve() == home.prefect.resolve()


# ---------------------------------------------------------------- leases: who uses the server

_leases: dict[Path, list[int]] = {}  # home root -> [fd of users.lock, holders in this process]


def _take_lease(home: ProjectHome, timeout_s: float) -> None:
    key = home.root.resolve()
    if key in _leases:
        _leases[key][1] += 1
        return
    fd = open_lock_file(server_dir(home) / "users.lock")
    if not wait_for_lock(fd, timeout_s, shared=True):  # a supervisor holds it while it stops its server
        os.close(fd)
        raise RqsidError(f"the Prefect server of {home.root} was still stopping after {timeout_s:g} s")
    _leases[key] = [fd, 1]


def leave(home: ProjectHome) -> None:
    """Give back this process's lease; the server stops once no process holds one."""
    key = home.root.resolve()
    if key not in _leases:
        return
    _leases[key][1] -= 1
    if _leases[key][1] == 0:
        os.close(_leases.pop(key)[0])


# ---------------------------------------------------------------- joining (and starting) the home's server


def running(home: ProjectHome) -> HomeServer | None:
    """The home's server, when its supervisor is alive and the server answers for this home."""
    folder = server_dir(home)
    try:
        record = json.loads((folder / "prefect.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    alive = open_lock_file(folder / "supervisor.lock")
    try:
        if try_lock(alive, shared=True):  # nobody holds it: the supervisor is gone
            return None
    finally:
        os.close(alive)
    if not serves_home(record["api_url"], home):
        return None
    return HomeServer(record["api_url"], record["port"], record["server_pid"], started=False)


def join(home: ProjectHome, port: int | None = None, timeout_s: float = 150.0) -> HomeServer:
    """The home's Prefect server, started now if none runs; this process holds a lease on it until it exits
    (or calls `leave`). `port` is tried first when a server has to be started."""
    folder = server_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / "start.lock", timeout_s, f"starting the Prefect server of {home.root}"):
        _take_lease(home, timeout_s)
        try:
            return running(home) or _start(home, port or _last_port(folder), timeout_s)
        except BaseException:
            leave(home)
            raise


def _last_port(folder: Path) -> int:
    try:
        return int((folder / "port").read_text())
    except (FileNotFoundError, ValueError):
        return DEFAULT_PORT


def _start(home: ProjectHome, port: int, timeout_s: float) -> HomeServer:
    from tasks.services import free_port, port_in_use

    folder = server_dir(home)
    log = folder / "supervisor.log"
    with open(log, "ab") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "tasks.home_server", str(home.root), str(port if not port_in_use(port) else free_port())],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **home.environment()}, cwd=home.root,
            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while (server := running(home)) is None:
        if supervisor.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise RqsidError(f"the Prefect server of {home.root} did not start (exit {supervisor.returncode}); "
                             f"last lines of {log}:\n{tail}")
        if time.monotonic() > deadline:
            raise RqsidError(f"the Prefect server of {home.root} was not ready within {timeout_s:g} s; see {log}")
        time.sleep(POLL_S)
    return HomeServer(server.api_url, server.port, server.server_pid, started=True)


# ---------------------------------------------------------------- the supervisor


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def supervise(home: ProjectHome, port: int) -> int:
    """Run the home's server until no process holds a lease on it (or it dies, or we get SIGTERM/SIGINT)."""
    from tasks.services import free_port, start_prefect_server

    folder = server_dir(home)
    alive = open_lock_file(folder / "supervisor.lock")
    if not wait_for_lock(alive, 30.0):  # a previous supervisor still stopping its server
        print(f"another supervisor holds {folder / 'supervisor.lock'}", flush=True)
        return 1
    users = open_lock_file(folder / "users.lock")
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    server = None
    try:
        try:
            server = start_prefect_server(home, port)
        except RqsidError as err:  # the port was taken between the choice and the start
            print(f"{err}; trying a free port", flush=True)
            server = start_prefect_server(home, free_port())
        bound = int(server.url.rsplit(":", 1)[1])
        write_json_atomic(folder / "prefect.json", {"api_url": server.api_url, "port": bound, "server_pid": server.process.pid,
                                                    "supervisor_pid": os.getpid(), "prefect_home": str(home.prefect)})
        (folder / "port").write_text(str(bound))
        print(f"serving {server.api_url} for {home.root}", flush=True)
        while server.process.poll() is None and not try_lock(users):
            time.sleep(POLL_S)  # a daemon's poll: leases come and go at any time
        print("no user left" if server.process.poll() is None else "the server died", flush=True)
    finally:
        (folder / "prefect.json").unlink(missing_ok=True)  # first: nobody joins a server that is stopping
        if server is not None:
            server.stop(timeout_s=20.0)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(ProjectHome(Path(sys.argv[1])), int(sys.argv[2])))
