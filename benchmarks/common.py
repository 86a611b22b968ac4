"""Shared helpers of the benchmark scripts: machine and version info, the command that made a
result, stage timing with peak-RSS sampling, and the JSON + markdown writer.

Every result records the machine's load average: the 2-core box is shared, so absolute figures move
with the load; ratios measured inside one run are what the benchmarks compare.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("rqsid", "numpy", "torch", "pyarrow", "dask", "distributed", "sentence-transformers",
            "faiss-cpu", "vector-quantize-pytorch", "psutil")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    import psutil

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def command_line() -> str:
    """The command that reproduces this run, from the repo root."""
    script = os.path.relpath(sys.argv[0], Path(__file__).resolve().parent.parent)
    return " ".join([".venv/bin/python", shlex.quote(script), *map(shlex.quote, sys.argv[1:])])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


class RssSampler:
    """Samples this process's resident set size in a thread; `peak()` since the last `reset()`."""

    def __init__(self, interval_s: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def rss(self) -> int:
        return self._process.memory_info().rss

    def reset(self) -> None:
        self._peak = self.rss()

    def peak(self) -> int:
        self._peak = max(self._peak, self.rss())
        return self._peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Stages:
    """Wall time, CPU time and peak RSS per named stage (`with stages("fit"): ...`)."""

    def __init__(self) -> None:
        self.sampler = RssSampler()
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def __call__(self, name: str, **extra: Any) -> Iterator[dict[str, Any]]:
        self.sampler.reset()
        row: dict[str, Any] = {"stage": name, "load_before": load(), **extra}
        start, cpu = time.perf_counter(), time.process_time()
        rss_before = self.sampler.rss()
        yield row
        row["seconds"] = round(time.perf_counter() - start, 3)
        row["cpu_s"] = round(time.process_time() - cpu, 3)
        row["rss_before_mb"] = round(rss_before / 2**20, 1)
        row["peak_rss_mb"] = round(self.sampler.peak() / 2**20, 1)
        self.rows.append(row)
        log(f"{name}: {row['seconds']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB")

    def close(self) -> None:
        self.sampler.close()


def header(title: str, result: dict[str, Any], notes: list[str] = ()) -> list[str]:
    m, v = result["machine"], result["versions"]
    lines = [f"# {title}", "", f"Made {result['date']} by: `{result['command']}`", "",
             f"Machine: {m['cpu_count']} cores ({m['processor']}), {m['memory_gib']} GiB, load average at start "
             f"{m['load_avg'][0]} (the cores are shared with other work: compare ratios measured in the same run, "
             "not absolute figures across runs).",
             "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", ""]
    return lines + [*notes, ""] if notes else lines


def md_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> list[str]:
    """Markdown table; columns are (header, key, format spec); missing values print as '-'."""
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "| " + " | ".join("---" if not spec else "---:" for _, _, spec in columns) + " |"]
    for row in rows:
        cells = []
        for _, key, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None else (format(value, spec) if spec else str(value)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def new_result(**fields: Any) -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command_line(), "machine": machine(),
            "versions": versions(), **fields}


def write_result(name: str, result: dict[str, Any], markdown: str, out_dir: Path = RESULTS) -> Path:
    """benchmarks/results/<name>.json and .md; prints the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1, default=_plain))
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
    return out_dir / f"{name}.md"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)
