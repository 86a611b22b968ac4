"""What every flow shares: its MLflow run with one nested run per stage, lineage tags, and stage timing
(wall seconds against the seconds spent in library compute, so orchestration overhead is measured)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rqsid.checkpoints import reach
from rqsid.config import RqsidConfig
from rqsid.jsonio import json_default


def flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@dataclass
class Stage:
    name: str
    compute_s: float = 0.0
    wall_s: float = 0.0
    lineage: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "wall_s": round(self.wall_s, 3), "compute_s": round(self.compute_s, 3)}


class FlowRecorder:
    """One MLflow run per flow run (nested under the caller's run when a flow calls another), one nested
    run per stage; each run is tagged with the versions it was made from and the Prefect flow run id."""

    def __init__(self, flow_name: str, catalog_name: str, config: RqsidConfig):
        from tasks.tracking import Tracker

        self.flow_name = flow_name
        self.catalog_name = catalog_name
        self.config = config
        self.tracker = Tracker(config.orchestration.mlflow_tracking_uri)
        self.experiment = self.tracker.experiment(catalog_name)
        self.stages: list[Stage] = []
        self.lineage: dict[str, str] = {}
        self.run_id: str | None = None
        self._start = time.perf_counter()

    @contextmanager
    def run(self) -> Iterator[FlowRecorder]:
        import mlflow

        nested = mlflow.active_run() is not None
        tags = {"rqsid.flow": self.flow_name, "rqsid.catalog": self.catalog_name}
        with self.tracker.start_run(self.flow_name, self.experiment, nested=nested, tags=tags) as run:
            self.run_id = run.info.run_id
            self.tracker.log_config(self.config)
            self.tracker.set_lineage(prefect_flow_run_id=flow_run_id())
            try:
                yield self
            finally:
                self.tracker.set_lineage(**self.lineage)
                timing = self.timing()
                mlflow.log_metrics({"time.total_s": timing["total_s"], "time.compute_s": timing["compute_s"],
                                    "time.orchestration_share": timing["orchestration_share"]})
                mlflow.log_dict(timing, "timing.json")

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """A nested MLflow run around one stage; the body fills `stage.compute_s`, lineage and metrics."""
        import mlflow

        record = Stage(name)
        start = time.perf_counter()
        with self.tracker.start_run(name, self.experiment, nested=True, tags={"rqsid.stage": name}):
            yield record
            self.lineage.update(record.lineage)
            self.tracker.set_lineage(prefect_flow_run_id=flow_run_id(), **self.lineage)
            if record.metrics:
                mlflow.log_metrics({k: float(v) for k, v in record.metrics.items() if v is not None})
        record.wall_s = time.perf_counter() - start
        self.stages.append(record)
        mlflow.log_metrics({f"time.{name}.wall_s": record.wall_s, f"time.{name}.compute_s": record.compute_s})

    def log_json(self, value: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(value, default=json_default)), artifact_file)

    def log_file(self, path: Path, subdir: str | None = None) -> None:
        self.tracker.log_artifact(path, subdir)

    def timing(self) -> dict[str, Any]:
        total = time.perf_counter() - self._start
        compute = sum(s.compute_s for s in self.stages)
        return {
            "flow": self.flow_name,
            "total_s": round(total, 3),
            "compute_s": round(compute, 3),
            "orchestration_share": round(1 - compute / total, 4) if total > 0 else 0.0,
            "stages": [s.as_dict() for s in self.stages],
        }


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
        stage.metrics = {"n_embedded": emb.n_embedded, "dim": emb.dim, "embeddings_gate_success": 1.0}
        recorder.log_json(gate, "gx/embeddings.json")
        if not emb.reused:
            recorder.log_file(emb.file, "embeddings")
    return emb


def plot_report(recorder: FlowRecorder, report: dict, label: str, title: str = "") -> float:
    """Token-frequency and Lorenz plots of a distribution report, logged to the active (stage) run;
    returns the seconds spent drawing them (library compute)."""
    from rqsid.plots import plot_lorenz, plot_token_frequencies

    drawing = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for plot, stem in ((plot_token_frequencies, "token_frequencies"), (plot_lorenz, "lorenz")):
            path = Path(folder) / f"{label}_{stem}.png"
            started = time.perf_counter()
            plot(report, path, title)
            drawing += time.perf_counter() - started
            recorder.log_file(path, "plots")
    return drawing
