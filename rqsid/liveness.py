"""Which rqsid processes of a home are alive, and what the dead ones left open.

A process that opens runs (MLflow runs, Prefect flow runs) first takes a record
`<home>/running/<token>.json` and keeps it locked until it ends: the kernel drops an fcntl lock when
its process dies, even by SIGKILL, so a record whose lock is free belongs to a dead process. The
process tags what it opens with its token and notes where (which MLflow store, which Prefect API);
a later command takes over the records of dead processes, closes what they left open
(tasks.recovery) and forgets them.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rqsid.locks import open_lock_file, try_lock

OWNER_TAG = "rqsid.owner"  # MLflow runs carry it (tag) and Prefect flow runs too (as "rqsid.owner:<token>")


def records_dir(home_root: Path) -> Path:
    return Path(home_root) / "running"


@dataclass
class ProcessRecord:
    """This process's record in one home: its token, and where it opened runs (noted as it goes)."""

    token: str
    path: Path
    fd: int
    info: dict = field(default_factory=dict)
    left_open: bool = False  # runs this process could not close: its record outlives it, for the next command

    def note(self, key: str, value: str) -> None:
        """Remember that this process used `value` (an MLflow URI, a Prefect API URL) under `key`."""
        values = self.info.setdefault(key, [])
        if value not in values:
            values.append(value)
            data = json.dumps(self.info).encode()
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)

    @property
    def prefect_tag(self) -> str:
        return f"{OWNER_TAG}:{self.token}"


_mine: dict[tuple[Path, int], ProcessRecord] = {}


def this_process(home_root: Path) -> ProcessRecord:
    """This process's record in the home (taken on first use, held until the process ends)."""
    key = (Path(home_root).resolve(), os.getpid())  # a forked child is another process: its own record
    if key not in _mine:
        token = secrets.token_hex(6)
        path = records_dir(key[0]) / f"{token}.json"
        fd = open_lock_file(path)
        if not try_lock(fd):  # a fresh random name: nobody else can hold it
            raise RuntimeError(f"process record {path} is locked by another process")
        record = ProcessRecord(token, path, fd, {"pid": os.getpid(), "since": time.time(), "argv": sys.argv[:6]})
        record.note("token", token)
        _mine[key] = record
        atexit.register(_forget, record)  # a normal exit closed its runs itself
    return _mine[key]


def _forget(record: ProcessRecord) -> None:
    if not record.left_open:
        record.path.unlink(missing_ok=True)
    os.close(record.fd)


@dataclass
class DeadProcess:
    token: str
    info: dict
    path: Path

    @property
    def prefect_tag(self) -> str:
        return f"{OWNER_TAG}:{self.token}"

    def describe(self) -> str:
        argv = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(self.info.get("argv", [])))
        return f"pid {self.info.get('pid', '?')} ({argv or 'unknown command'})"

    def forget(self) -> None:
        """Everything it left open is closed: remove its record."""
        self.path.unlink(missing_ok=True)


def dead_processes(home_root: Path) -> Iterator[DeadProcess]:
    """Records of the home's processes that died, each locked while the caller handles it (two commands never
    handle one at once); the caller `forget()`s those it has dealt with, the others stay for the next command."""
    folder = records_dir(home_root)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # forgotten meanwhile by another command
            continue
        try:
            if not try_lock(fd):
                continue  # alive
            try:
                info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
            except ValueError:
                info = {}
            yield DeadProcess(path.stem, info, path)
        finally:
            os.close(fd)
