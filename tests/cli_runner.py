"""Running the real `rqsid` command from tests: in a fresh process, as a user does, or in this process
(saves the imports per call) with its output captured."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

from cli.main import main

REPO = Path(__file__).resolve().parent.parent


def run_process(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`rqsid ARGS...` in a fresh Python process (`python -m cli`), output captured."""
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def cli_argv(*args) -> list[str]:
    """The argv of `rqsid ARGS...` for a process the test starts and controls itself."""
    return [sys.executable, "-m", "cli", *map(str, args)]


def rqsid(*args, ok: bool = True) -> subprocess.CompletedProcess:
    """`rqsid ARGS...` in this process; asserts exit code 0 unless ok=False."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    result = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if ok:
        assert code == 0, result.stderr[-3000:]
    return result
