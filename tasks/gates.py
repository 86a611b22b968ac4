"""Great Expectations gates: the catalog, the embeddings and the SID distribution, as suites in code.

One ephemeral GX context per process (importing GX costs 2-3 s, building a suite ~0.1 s), progress
bars off. Each gate validates a small derived pandas frame (per-row stats, or one row of metrics)
so that every threshold is an ordinary expectation whose observed value lands in the result.
Thresholds are suite parameters (`{"$PARAMETER": ...}`), so a suite is built once and reused with
any config.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np
import pandas as pd

from rqsid import RqsidError
from rqsid.config import GateConfig

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

_LOCK = threading.Lock()  # GX contexts are not thread-safe; Prefect may run tasks in threads


@dataclass
class GateResult:
    name: str
    success: bool
    failures: list[str] = field(default_factory=list)  # one human line per failed expectation
    statistics: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # GX's to_json_dict()

    def raise_for_failure(self) -> None:
        if not self.success:
            raise RqsidError(f"gate {self.name!r} failed: " + "; ".join(self.failures))


# ---------------------------------------------------------------- GX plumbing (cached per process)


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.data_sources.add_pandas("rqsid")
    return context


@cache
def _validation(name: str, build: Callable[[Any], list]):
    """A ValidationDefinition over a whole-dataframe batch; `build(gx.expectations)` lists the expectations."""
    import great_expectations as gx

    context = _context()
    asset = context.data_sources.get("rqsid").add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}-all")
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in build(gx.expectations):
        suite.add_expectation(expectation)
    return context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))


def _run(name: str, build: Callable, frame: pd.DataFrame, params: dict | None = None,
         row_labels: pd.Series | None = None) -> GateResult:
    with _LOCK:
        outcome = _validation(name, build).run(
            batch_parameters={"dataframe": frame}, expectation_parameters=params or {}
        )
    failures = [_describe(r, row_labels) for r in outcome.results if not r.success]
    return GateResult(name, bool(outcome.success), failures, dict(outcome.statistics), outcome.to_json_dict())


def _describe(result, row_labels: pd.Series | None) -> str:
    """One line: what was expected, and what was seen (observed value, or the offending rows)."""
    config = result.expectation_config
    what = config.description or config.type
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"{what}: could not be evaluated ({result.exception_info.get('exception_message')})"
    seen = result.result or {}
    if "observed_value" in seen:
        return f"{what}: observed {_short(seen['observed_value'])}"
    count, total = seen.get("unexpected_count", 0), seen.get("element_count", 0)
    rows = seen.get("partial_unexpected_index_list") or []
    values = seen.get("partial_unexpected_list") or []
    examples = []
    for row, value in list(zip(rows, values, strict=False))[:5]:
        label = f" item {row_labels.iloc[row]}" if row_labels is not None else ""
        examples.append(f"row {row}{label} = {_short(value)}")
    example = f"; e.g. {', '.join(examples)}" if examples else ""
    return f"{what}: {count} of {total} rows{example}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- catalog


def _catalog_expectations(E) -> list:
    return [
        E.ExpectTableRowCountToBeBetween(min_value=1, description="catalog has at least one row"),
        E.ExpectColumnValuesToNotBeNull(column="item_id", description="item_id is present"),
        E.ExpectColumnValueLengthsToBeBetween(column="item_id", min_value=1, description="item_id is not empty"),
        E.ExpectColumnValuesToBeUnique(column="item_id", description="item_id is unique"),
        E.ExpectColumnValuesToBeBetween(
            column="text_chars", min_value=1, description="item has text (title or description non-empty)"
        ),
    ]


def _text_chars(df: pd.DataFrame) -> np.ndarray:
    """Characters of stripped title + description per row (missing columns count as empty)."""
    total = np.zeros(len(df), dtype=np.int64)
    for column in ("title", "description"):
        if column in df.columns:
            text = df[column].astype("string").fillna("").str.strip()
            total += text.str.len().to_numpy(dtype=np.int64)
    return total


def check_catalog(df: pd.DataFrame) -> GateResult:
    """Catalog gate: >= 1 row, item_id present, non-empty and unique, every item has some text."""
    if "item_id" not in df.columns:
        raise RqsidError(f"catalog has no item_id column (columns: {', '.join(map(str, df.columns))})")
    ids = df["item_id"].astype("object").where(df["item_id"].notna(), None).reset_index(drop=True)
    frame = pd.DataFrame({"item_id": ids, "text_chars": _text_chars(df)})
    labels = ids.map(lambda v: f"{v!r}")
    return _run("catalog", _catalog_expectations, frame, row_labels=labels)


# ---------------------------------------------------------------- embeddings


def _embedding_expectations(E) -> list:
    return [
        E.ExpectTableRowCountToBeBetween(min_value=1, description="at least one embedding"),
        E.ExpectColumnValuesToNotBeNull(column="item_id", description="item_id is present"),
        E.ExpectColumnValuesToBeUnique(column="item_id", description="item_id is unique"),
        E.ExpectColumnValuesToBeBetween(
            column="dim",
            min_value={"$PARAMETER": "expected_dim"},
            max_value={"$PARAMETER": "expected_dim"},
            description="vectors have the expected dimension",
        ),
        E.ExpectColumnValuesToBeBetween(
            column="non_finite", max_value=0, description="vectors have no NaN or inf"
        ),
        E.ExpectColumnValuesToBeBetween(
            column="norm",
            min_value={"$PARAMETER": "min_norm"},
            max_value={"$PARAMETER": "max_norm"},
            description="vector norms within bounds",
        ),
    ]


def check_embeddings(ids, X, expected_dim: int, min_norm: float = 1e-3, max_norm: float = 1e3) -> GateResult:
    """Embeddings gate over per-row stats: ids unique, dimension, no NaN/inf, norms in [min_norm, max_norm].

    The default bounds catch zero vectors (empty text, a broken model) and blown-up ones; normalised
    embeddings can pass tighter bounds, e.g. (0.99, 1.01).
    """
    X = np.asarray(X)
    ids = np.asarray(ids, dtype=object)
    if X.ndim != 2:
        raise RqsidError(f"embeddings must be a 2-D array (items x dim), got shape {X.shape}")
    if len(ids) != X.shape[0]:
        raise RqsidError(f"embeddings have {X.shape[0]} rows but {len(ids)} item ids")
    finite = np.isfinite(X)
    norms = np.linalg.norm(np.where(finite, X, 0.0).astype(np.float64), axis=1)
    frame = pd.DataFrame({
        "item_id": pd.Series(ids, dtype=object),
        "dim": np.full(len(ids), X.shape[1], dtype=np.int64),
        "non_finite": (~finite).sum(axis=1).astype(np.int64),
        "norm": norms,
    })
    params = {"expected_dim": int(expected_dim), "min_norm": float(min_norm), "max_norm": float(max_norm)}
    labels = pd.Series(ids).map(lambda v: f"{v!r}")
    return _run("embeddings", _embedding_expectations, frame, params, row_labels=labels)


# ---------------------------------------------------------------- SID distribution


def _distribution_builder(levels: tuple[int, ...], has_layer2: bool) -> Callable:
    """Expectations over a one-row metrics frame; ExpectColumnMax/Min report the observed value."""

    def build(E) -> list:
        out = []
        if has_layer2:
            out.append(E.ExpectColumnMaxToBeBetween(
                column="layer2_gini", max_value={"$PARAMETER": "max_layer2_gini"},
                description="layer-2 Gini <= max_layer2_gini",
            ))
        out.append(E.ExpectColumnMaxToBeBetween(
            column="collision_rate", max_value={"$PARAMETER": "max_collision_rate"},
            description="collision rate <= max_collision_rate",
        ))
        for level in levels:
            out.append(E.ExpectColumnMinToBeBetween(
                column=f"l{level}_utilisation", min_value={"$PARAMETER": "min_utilisation"},
                description=f"layer {level} utilisation >= min_utilisation",
            ))
        return out

    return build


_BUILDERS: dict[tuple, Callable] = {}


def distribution_gate_inputs(report: dict) -> dict[str, float]:
    """The figures the distribution gate judges: collision rate, layer-2 Gini, each layer's utilisation.

    A layer that no item keeps a token at (dropped entirely by pruning) is left out: an absent layer is
    neither concentrated nor under-used.
    """
    try:
        layers = {int(layer["level"]): layer for layer in report["layers"] if layer["n_items"] > 0}
        metrics = {"collision_rate": float(report["collision_rate"])}
    except (KeyError, TypeError) as err:
        raise RqsidError(f"distribution report lacks {err}; expected rqsid.metrics.distribution_report output") from None
    if 2 in layers:
        metrics["layer2_gini"] = float(layers[2]["gini"])
    for level, layer in layers.items():
        metrics[f"l{level}_utilisation"] = float(layer["utilisation"])
    return metrics


def check_distribution(report: dict, gate: GateConfig) -> GateResult:
    """Distribution gate over `rqsid.metrics.distribution_report`: layer-2 Gini, collisions, utilisation
    (`distribution_gate_inputs`)."""
    metrics = distribution_gate_inputs(report)
    levels = tuple(sorted(int(k.removeprefix("l").removesuffix("_utilisation")) for k in metrics if k.endswith("_utilisation")))
    key = (levels, "layer2_gini" in metrics)
    if key not in _BUILDERS:
        _BUILDERS[key] = _distribution_builder(*key)
    name = "distribution-" + "-".join(map(str, key[0])) + ("" if key[1] else "-nol2")
    params = {
        "max_layer2_gini": gate.max_layer2_gini,
        "max_collision_rate": gate.max_collision_rate,
        "min_utilisation": gate.min_utilisation,
    }
    return _run(name, _BUILDERS[key], pd.DataFrame([metrics]), params)
