"""What every Prefect task shares: the version store they write to, the stopwatch that separates library
compute from orchestration, and the error that stops a flow when a quality gate fails.

Every artifact lives in the project home's version store (`rqsid.versioning.VersionStore`) under a
version id hashed from its inputs' version ids and its config. A task first computes that id; when
the version is already on disk it returns it (`reused=True`) without recomputing. That, not Prefect's
result cache, is what lets a rerun after a crash resume where it stopped, in any process. Prefect
task caching is therefore off (NO_CACHE): hashing arrays for cache keys would only cost time.

Each task measures the seconds spent inside library calls (`compute_s`) so that flows can report
how much of their wall time went to orchestration instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rqsid import RqsidError
from rqsid.home import ProjectHome
from rqsid.versioning import IndexRegistry, VersionStore


class GateFailed(RqsidError):
    """A quality gate failed; the flow stops and publishes nothing."""


@dataclass
class Stopwatch:
    """Seconds spent inside library compute, accumulated over `with watch.compute():` blocks."""

    compute_s: float = 0.0

    @contextmanager
    def compute(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.compute_s += time.perf_counter() - start


def store(home: ProjectHome | None = None) -> VersionStore:
    return VersionStore((home or ProjectHome.default()).data)


def registry(catalog_name: str, home: ProjectHome | None = None) -> IndexRegistry:
    return IndexRegistry((home or ProjectHome.default()).indexes / catalog_name)


def gate_dict(gate) -> dict:
    """A GX gate result as the JSON that flows log and index versions keep."""
    return {"name": gate.name, "success": gate.success, "failures": gate.failures, "statistics": gate.statistics}
