"""MLflow adapter: one experiment per catalog, runs with config/report/lineage, the generator registry.

Defaults keep everything under the project home: a sqlite store (`<home>/mlflow.db`) and local
artifacts (`<home>/mlartifacts/<experiment>`). Prefect is never imported here: the flow run id is
passed in by the caller (`set_lineage(prefect_flow_run_id=...)`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the string "true"; "1" is ignored
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from rqsid import RqsidError  # noqa: E402
from rqsid.config import RqsidConfig  # noqa: E402
from rqsid.home import ProjectHome  # noqa: E402
from rqsid.liveness import OWNER_TAG, this_process  # noqa: E402

CHAMPION = "champion"
LAYER_METRICS = ("gini", "entropy_bits", "entropy_norm", "std", "utilisation", "max_share")
_METRIC_TAG = "rqsid.metric."


def default_pip_requirements() -> list[str]:
    """Pins of the packages a generator needs to load, read from this environment (fast, and right)."""
    pins = []
    for package in ("rqsid", "torch", "numpy", "pandas", "pyarrow"):
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a saved generator folder (artifact "generator").

    `loader` is "module:function"; the function takes the folder and returns an object with
    `.predict(model_input)`. Without one, the model is a versioned artifact: load it and read
    `model_dir`.
    """

    def __init__(self, loader: str | None = None):
        self.loader = loader
        self.model_dir: str | None = None
        self._model = None

    def load_context(self, context) -> None:
        self.model_dir = context.artifacts["generator"]
        if self.loader:
            module, _, function = self.loader.partition(":")
            load = getattr(__import__(module, fromlist=[function]), function)
            self._model = load(self.model_dir)

    # The DataFrame type hint is what MLflow wants to see (else it warns on every import).
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        if self._model is None:
            raise RqsidError(f"generator at {self.model_dir} was registered without a loader; load it with rqsid")
        return self._model.predict(model_input)


class Tracker:
    def __init__(self, tracking_uri: str | None = None, artifact_root: str | Path | None = None):
        home = ProjectHome.default()
        if tracking_uri is None or artifact_root is None:
            home.ensure()
        self.tracking_uri = tracking_uri or home.mlflow_uri
        self.artifact_root = Path(artifact_root or home.mlflow_artifacts).resolve()
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        _prepare_sqlite_store(self.tracking_uri, self.client)

    # ------------------------------------------------------------ experiments and runs

    def experiment(self, catalog_name: str) -> str:
        """The experiment of a catalog (created on first use, artifacts under the artifact root)."""
        found = self.client.get_experiment_by_name(catalog_name)
        if found is not None:
            return found.experiment_id
        location = (self.artifact_root / catalog_name).as_uri()
        try:
            return self.client.create_experiment(catalog_name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(catalog_name).experiment_id

    @contextmanager
    def start_run(self, name: str, experiment: str, nested: bool = False,
                  tags: dict[str, Any] | None = None) -> Iterator[mlflow.ActiveRun]:
        """A run in `experiment` (an id from `.experiment()`); nested=True makes it a child of the active run."""
        mlflow.set_tracking_uri(self.tracking_uri)
        owner = this_process(ProjectHome.default().root)  # a dead owner's runs are ended by tasks.recovery
        owner.note("mlflow", self.tracking_uri)
        tags = {OWNER_TAG: owner.token, **(tags or {})}
        with mlflow.start_run(run_name=name, experiment_id=experiment, nested=nested,
                              tags={k: str(v) for k, v in tags.items()}) as run:
            yield run

    @staticmethod
    def _active_run_id() -> str:
        run = mlflow.active_run()
        if run is None:
            raise RqsidError("no active MLflow run: call inside `with tracker.start_run(...)`")
        return run.info.run_id

    # ------------------------------------------------------------ logging

    def log_config(self, config: RqsidConfig) -> None:
        self._active_run_id()
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in config.flat().items()})
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")

    def log_report(self, report: dict, prefix: str) -> dict[str, float]:
        """Per-layer metrics `{prefix}.l{n}.{gini,...}`, `{prefix}.collision_rate`, and the report as JSON."""
        self._active_run_id()
        metrics = report_metrics(report, prefix)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, f"reports/{prefix}.json")
        return metrics

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._active_run_id()
        path = Path(path)
        if not path.exists():
            raise RqsidError(f"artifact {path} does not exist")
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"{subdir}/{path.name}" if subdir else path.name)
        else:
            mlflow.log_artifact(str(path), artifact_path=subdir)

    def set_lineage(self, prefect_flow_run_id: str | None = None, **ids: str) -> None:
        """Tags `rqsid.lineage.<name>` = version id (catalog=..., embedding=..., index=...)."""
        self._active_run_id()
        tags = {f"rqsid.lineage.{name}": str(value) for name, value in ids.items() if value is not None}
        if prefect_flow_run_id:
            tags["prefect.flow_run_id"] = str(prefect_flow_run_id)
        mlflow.set_tags(tags)

    # ------------------------------------------------------------ model registry

    def register_generator(self, model_dir: str | Path, name: str, metrics: dict[str, float],
                           pip_requirements: list[str] | None = None, loader: str | None = None,
                           python_model: mlflow.pyfunc.PythonModel | str | None = None, signature=None,
                           metadata: dict[str, Any] | None = None, input_example=None,
                           tags: dict[str, str] | None = None) -> int:
        """Log the generator folder as a pyfunc model in the active run, register it (the version carries
        `tags`, set in the same transaction); returns the version. `python_model` serves the folder
        (default: GeneratorModel with `loader`); tasks.serving passes its own."""
        run_id = self._active_run_id()
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise RqsidError(f"generator folder {model_dir} does not exist")
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        info = mlflow.pyfunc.log_model(
            name="generator",
            python_model=python_model or GeneratorModel(loader),
            artifacts={"generator": str(model_dir)},
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements if pip_requirements is not None else default_pip_requirements(),
            metadata={"rqsid.loader": loader or "", **(metadata or {})},
        )
        version = mlflow.register_model(info.model_uri, name, tags={"rqsid.run_id": run_id, **(tags or {})})
        for key, value in metrics.items():
            self.client.set_model_version_tag(name, version.version, _METRIC_TAG + key, repr(float(value)))
        return int(version.version)

    def version_tagged(self, name: str, key: str, value: str) -> int | None:
        """The model version of `name` whose tag `key` is `value` (the first one), or None."""
        try:
            found = self.client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
        except MlflowException:
            return None
        return min((int(v.version) for v in found), default=None)

    def champion(self, name: str) -> tuple[int, dict[str, float]] | None:
        """(version, metrics) of the model's "champion" alias, or None when there is none yet."""
        try:
            version = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            return None
        metrics = {k[len(_METRIC_TAG):]: float(v) for k, v in version.tags.items() if k.startswith(_METRIC_TAG)}
        return int(version.version), metrics

    def promote(self, name: str, version: int) -> None:
        try:
            self.client.get_model_version(name, str(version))
        except MlflowException:
            raise RqsidError(f"model {name!r} has no version {version}") from None
        self.client.set_registered_model_alias(name, CHAMPION, str(version))

    def model_uri(self, name: str, alias: str = CHAMPION) -> str:
        return f"models:/{name}@{alias}"


def _prepare_sqlite_store(uri: str, client: MlflowClient) -> None:
    """Create (migrate) a sqlite store under a file lock: two processes creating one store at once break its
    schema migration. Then WAL mode, so that readers do not block the writer of another process (MLflow
    itself waits up to 20 s on a busy database)."""
    if not uri.startswith("sqlite:///") or uri in _PREPARED:
        return
    import sqlite3
    from contextlib import closing

    from rqsid.locks import file_lock

    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    with file_lock(path.with_name(path.name + ".init.lock"), 120.0, f"creating the MLflow store {path}"):
        client.search_experiments(max_results=1)  # creates or migrates the tracking tables
        client.search_registered_models(max_results=1)  # and the registry's
        with closing(sqlite3.connect(path, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    _PREPARED.add(uri)


_PREPARED: set[str] = set()


def report_metrics(report: dict, prefix: str) -> dict[str, float]:
    """Flatten a distribution report into MLflow metric names (counts stay in the JSON artifact)."""
    out = {f"{prefix}.collision_rate": float(report["collision_rate"])}
    for layer in report["layers"]:
        for key in LAYER_METRICS:
            value = layer.get(key)
            if value is not None:
                out[f"{prefix}.l{layer['level']}.{key}"] = float(value)
    return out

