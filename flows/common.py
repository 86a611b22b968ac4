"""What every flow shares: its MLflow run with one nested run per stage, lineage tags, and stage timing
(wall seconds against the seconds spent in library compute, so orchestration overhead is measured)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.audit import Decision
from rqsid.checkpoints import reach
from rqsid.config import RqsidConfig
from rqsid.jsonio import json_default


def flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def _logger():
    """The Prefect run logger inside a flow or task run (its lines show in the Prefect UI), else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    compute_s: float = 0.0
    wall_s: float = 0.0
    lineage: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the stage's MLflow run

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "wall_s": round(self.wall_s, 3), "compute_s": round(self.compute_s, 3)}


_ACTIVE: ContextVar[FlowRecorder | None] = ContextVar("rqsid_flow_recorder", default=None)


class FlowRecorder:
    """One MLflow run per flow run (nested under the caller's run when a flow calls another), one nested
    run per stage; each run is tagged with the versions it was made from and the Prefect flow run id.

    Decisions (`decide`) become a tag and metrics of the flow's run, a log line and a row of the run's
    summary, which ends as the MLflow run's description and a markdown artifact of the Prefect flow run.
    A flow called by another hands its decisions and timing up to the caller's recorder."""

    def __init__(self, flow_name: str, catalog_name: str, config: RqsidConfig):
        from tasks.tracking import Tracker

        self.flow_name = flow_name
        self.catalog_name = catalog_name
        self.config = config
        self.tracker = Tracker(config.orchestration.mlflow_tracking_uri)
        self.experiment = self.tracker.experiment(catalog_name)
        self.stages: list[Stage] = []
        self.subflows: list[dict[str, Any]] = []  # timing of the flows this one called
        self.decisions: list[Decision] = []
        self.links: dict[str, str] = {}  # name -> URL or path, for the summary
        self.lineage: dict[str, str] = {}
        self.run_id: str | None = None
        self._start = time.perf_counter()

    @contextmanager
    def run(self) -> Iterator[FlowRecorder]:
        import mlflow

        nested = mlflow.active_run() is not None
        tags = {"rqsid.flow": self.flow_name, "rqsid.catalog": self.catalog_name}
        caller, token = _ACTIVE.get(), _ACTIVE.set(self)
        status = "failed"
        with self.tracker.start_run(self.flow_name, self.experiment, nested=nested, tags=tags) as run:
            self.run_id = run.info.run_id
            self.tracker.log_config(self.config)
            self.tracker.set_lineage(prefect_flow_run_id=flow_run_id())
            try:
                yield self
                status = "completed"
            finally:
                _ACTIVE.reset(token)
                self.tracker.set_lineage(**self.lineage)
                timing = self.timing()
                mlflow.log_metrics({"time.total_s": timing["total_s"], "time.compute_s": timing["compute_s"],
                                    "time.orchestration_share": timing["orchestration_share"]})
                mlflow.log_dict(timing, "timing.json")
                self._summarise(status, timing)
                if caller is not None:
                    caller.adopt(self, timing)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """A nested MLflow run around one stage; the body fills `stage.compute_s`, lineage and metrics."""
        import mlflow

        record = Stage(name)
        start = time.perf_counter()
        with self.tracker.start_run(name, self.experiment, nested=True, tags={"rqsid.stage": name}) as run:
            record.run_id = run.info.run_id
            yield record
            self.lineage.update(record.lineage)
            self.tracker.set_lineage(prefect_flow_run_id=flow_run_id(), **self.lineage)
            if record.metrics:
                mlflow.log_metrics({k: float(v) for k, v in record.metrics.items() if v is not None})
        record.wall_s = time.perf_counter() - start
        self.stages.append(record)
        mlflow.log_metrics({f"time.{name}.wall_s": record.wall_s, f"time.{name}.compute_s": record.compute_s})

    def decide(self, name: str, verdict: str, figures: dict[str, float] | None = None, warn: bool = False) -> None:
        """Record a decision of this flow run: tag `rqsid.decision.<name>` and the figures as metrics of the flow's
        MLflow run, a log line, and a row of the summary."""
        figures = {k: float(v) for k, v in (figures or {}).items() if v is not None}
        decision = Decision(self.flow_name, name, verdict, figures)
        self.decisions.append(decision)
        (_logger().warning if warn else _logger().info)("%s decision: %s", name, verdict)
        self.tracker.client.set_tag(self.run_id, f"rqsid.decision.{name}", verdict)
        if figures:
            self.tracker.log_metrics(self.run_id, figures)

    def verdict(self, name: str) -> str | None:
        """The latest verdict of a decision of this flow run."""
        return next((d.verdict for d in reversed(self.decisions) if d.name == name), None)

    def adopt(self, child: FlowRecorder, timing: dict[str, Any]) -> None:
        """A called flow's timing counts in this one's, and its decisions show on this run too."""
        self.subflows.append(timing)
        self.decisions.extend(child.decisions)
        for decision in child.decisions:
            self.tracker.client.set_tag(self.run_id, f"rqsid.decision.{decision.name}", decision.verdict)
        self.links.update({k: v for k, v in child.links.items() if k not in ("MLflow run", "Prefect flow run")})

    def _summarise(self, status: str, timing: dict[str, Any]) -> None:
        """The run's summary: the MLflow run's description (`mlflow.note.content`) and a Prefect artifact."""
        from flows.audit import mlflow_run_url, mlflow_ui_url, prefect_flow_run_url, publish_summary, summary_markdown

        self.links["MLflow run"] = mlflow_run_url(mlflow_ui_url(self.config.orchestration), self.experiment, self.run_id)
        prefect_url = prefect_flow_run_url(flow_run_id())
        if prefect_url:
            self.links["Prefect flow run"] = prefect_url
        markdown = summary_markdown(self.flow_name, self.catalog_name, status, self.decisions, timing, self.links)
        self.tracker.client.set_tag(self.run_id, "mlflow.note.content", markdown)
        publish_summary(markdown, self.flow_name, self.catalog_name)

    def log_json(self, value: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(value, default=json_default)), artifact_file)

    def log_file(self, path: Path, subdir: str | None = None) -> None:
        self.tracker.log_artifact(path, subdir)

    def log_plot(self, draw: Callable[[Path], Path], name: str) -> float:
        """`draw(path)` writes a PNG; it is logged to the active run as plots/<name>.png. Returns the seconds spent
        drawing (library compute)."""
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            path = draw(Path(folder) / f"{name}.png")
            drawing = time.perf_counter() - started
            self.log_file(path, "plots")
        return drawing

    def timing(self) -> dict[str, Any]:
        """Wall and library-compute seconds; compute counts this flow's stages and the flows it called."""
        total = time.perf_counter() - self._start
        compute = sum(s.compute_s for s in self.stages) + sum(f["compute_s"] for f in self.subflows)
        timing = {
            "flow": self.flow_name,
            "total_s": round(total, 3),
            "compute_s": round(compute, 3),
            "orchestration_share": round(1 - compute / total, 4) if total > 0 else 0.0,
            "stages": [s.as_dict() for s in self.stages],
        }
        return timing | ({"flows": list(self.subflows)} if self.subflows else {})


def catalog_stage(recorder: FlowRecorder, catalog, interactions, demo_items):
    """Import, GX catalog suite, quarantine: the stored catalog version."""
    from tasks.catalog import load_catalog

    with recorder.stage("catalog") as stage:
        cat = load_catalog(catalog, interactions, demo_items)
        reach("catalog")
        stage.compute_s, stage.lineage = cat.compute_s, {"catalog": cat.version}
        stage.metrics = {"n_items": cat.n_items, "n_quarantined": cat.n_quarantined,
                         "catalog_gate_raw_success": float(cat.gates["catalog_raw"]["success"])}
        recorder.log_json(cat.gates | {"quarantine_reasons": cat.quarantine_reasons}, "gx/catalog.json")
        _logger().info("catalog %s: %d items (%s), %d rows quarantined%s", cat.name, cat.n_items, cat.version,
                       cat.n_quarantined, f" ({cat.quarantine_reasons})" if cat.n_quarantined else "")
        if cat.n_quarantined:
            recorder.log_file(cat.path / "quarantine.parquet", "quarantine")
    return cat


def embed_stage(recorder: FlowRecorder, cat, cfg: RqsidConfig, current: Path | None):
    """Embeddings (only new and changed items are embedded, on Dask) and the GX embedding suite."""
    from tasks.embeddings import embed_items, gate_embeddings

    with recorder.stage("embed") as stage:
        emb = embed_items(cat, cfg.embed, cfg.orchestration, previous_index=current)
        gate = gate_embeddings(emb, cfg.embed)
        stage.compute_s, stage.lineage = emb.compute_s, {"embedding": emb.version}
        stage.metrics = {"n_embedded": emb.n_embedded, "dim": emb.dim, "embeddings_gate_success": 1.0,
                         "reused": float(emb.reused)}  # a stored version: its file was logged by the run that made it
        recorder.log_json(gate, "gx/embeddings.json")
        _logger().info("embeddings %s: %d of %d items embedded now (the rest carried over); embeddings gate passed",
                       emb.version, emb.n_embedded, emb.n_items)
        if not emb.reused:
            recorder.log_file(emb.file, "embeddings")
    return emb
