"""Quantizer sweeps (findings 1 and 2): every method fitted on every input for every seed, each fit
reduced to its per-layer distribution report (and, for the real input, its SID table).

A fit is a unit of work with an id (`fit_version`: its input, method, seed and quantizer config), and
`save_fit` / `load_fit` keep it in a folder, so that an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rqsid.config import QuantizerConfig
from rqsid.jsonio import read_json, write_json
from rqsid.metrics import report_to_json, table_report
from rqsid.sids import SidTable, assign_sids, read_sids, write_sids
from rqsid.study.statistics import LAYER_KEYS, fmt
from rqsid.versioning import version_id


@dataclass
class SweepFit:
    source: str  # input name: "real", "uniform", "skewed", ... or a reference SID file
    method: str
    seed: int
    report: dict[str, Any]
    seconds: float = 0.0
    table: SidTable | None = None  # kept for real inputs (the generator study starts from it)


def fit_config(config: QuantizerConfig, method: str, seed: int) -> QuantizerConfig:
    return config.model_copy(update={"method": method, "seed": seed})


def fit_table(item_ids: Sequence[str], X: np.ndarray, config: QuantizerConfig, method: str, seed: int,
              progress: bool = False) -> tuple[SidTable, float]:
    """SIDs of X from a fresh tokenizer (method, seed) and the seconds the fit + encode took."""
    from rqsid.quantize import make_tokenizer

    started = time.perf_counter()
    tokenizer = make_tokenizer(fit_config(config, method, seed)).fit(X, progress=progress)
    table = assign_sids(item_ids, tokenizer.encode(X), tokenizer.codebook_sizes)
    return table, time.perf_counter() - started


def sweep_fit(source: str, item_ids: Sequence[str] | None, X: np.ndarray, config: QuantizerConfig, method: str,
              seed: int, keep_table: bool = False, progress: bool = False) -> SweepFit:
    """One fit of the sweep; `item_ids` names the rows (default 0..n-1)."""
    ids = np.arange(len(X)).astype(str) if item_ids is None else item_ids
    table, seconds = fit_table(ids, X, config, method, seed, progress)
    return SweepFit(source, method, seed, report_to_json(table_report(table)), seconds, table if keep_table else None)


def quantize_sweep(make_inputs: Callable[[int], Mapping[str, np.ndarray]], methods: Sequence[str],
                   seeds: Sequence[int], config: QuantizerConfig, keep_tables: Iterable[str] = (),
                   item_ids: Mapping[str, Sequence[str]] | None = None, progress: bool = False,
                   log: Callable[[str], None] = lambda _: None) -> list[SweepFit]:
    """Fit every method on every input of every seed; `make_inputs(seed)` gives that seed's inputs
    (synthetic data is redrawn per seed, so the spread covers the data draw and the fit). SID tables
    are kept for the inputs named in `keep_tables`; `item_ids` names an input's rows (default 0..n-1)."""
    keep = set(keep_tables)
    fits = []
    for seed in seeds:
        for source, X in make_inputs(seed).items():
            for method in methods:
                fit = sweep_fit(source, (item_ids or {}).get(source), X, config, method, seed, source in keep, progress)
                fits.append(fit)
                log(describe_fit(fit))
    return fits


def describe_fit(fit: SweepFit) -> str:
    ginis = " / ".join(fmt(g) for g in layer_values(fit.report, "gini"))
    return f"{fit.source} {fit.method} seed {fit.seed}: Gini {ginis} ({fit.seconds:.1f} s)"


def layer_values(report: Mapping[str, Any], key: str) -> list[float | None]:
    return [layer[key] for layer in report["layers"]]


def layer_rows(fit: SweepFit) -> list[dict[str, Any]]:
    """One row per layer: the labels of the fit and the layer's metrics."""
    rows = []
    for layer in fit.report["layers"]:
        rows.append({"source": fit.source, "method": fit.method, "seed": fit.seed, "level": layer["level"],
                     **{key: layer[key] for key in LAYER_KEYS},
                     "collision_rate": fit.report["collision_rate"], "fit_s": round(fit.seconds, 2)})
    return rows


# ---------------------------------------------------------------- fits as stored units of work


def fit_version(input_id: str, config: QuantizerConfig, method: str, seed: int, keep_table: bool) -> str:
    """The id of one fit: what it was fitted on and how (runtime fields such as threads left out)."""
    return version_id("study-fit", {"input": input_id}, {"quantizer": fit_config(config, method, seed).identity(),
                                                          "keep_table": keep_table})


def save_fit(folder: Path, fit: SweepFit) -> dict[str, Any]:
    """Write the fit into `folder`; returns the manifest fields (labels and seconds)."""
    write_json(folder / "report.json", fit.report)
    if fit.table is not None:
        write_sids(folder / "sids.parquet", fit.table)
    return {"source": fit.source, "method": fit.method, "seed": fit.seed, "seconds": fit.seconds}


def load_fit(folder: Path, manifest: Mapping[str, Any]) -> SweepFit:
    table = read_sids(folder / "sids.parquet") if (folder / "sids.parquet").exists() else None
    return SweepFit(manifest["source"], manifest["method"], int(manifest["seed"]), read_json(folder / "report.json"),
                    float(manifest["seconds"]), table)
