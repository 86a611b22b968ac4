"""MLflow adapter: one experiment per catalog, runs with config/report/lineage, the generator registry.

Defaults keep everything under the project home: a sqlite store (`<home>/mlflow.db`) and local
artifacts (`<home>/mlartifacts/<experiment>`). Prefect is never imported here: the flow run id is
passed in by the caller (`set_lineage(prefect_flow_run_id=...)`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the string "true"; "1" is ignored
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import ExperimentTag, Metric  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from rqsid import RqsidError, __version__  # noqa: E402
from rqsid.config import RqsidConfig  # noqa: E402
from rqsid.home import ProjectHome, repo_root  # noqa: E402
from rqsid.liveness import OWNER_TAG, this_process  # noqa: E402

CHAMPION = "champion"
LAYER_METRICS = ("gini", "entropy_bits", "entropy_norm", "std", "utilisation", "max_share")
# MLflow 3's UI shows an experiment of this kind in its training (ML) view, not its GenAI view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the run page shows it as the run's source commit
# ... but its UI opens in the GenAI view unless the link says otherwise (it keeps the choice while one navigates).
TRAINING_VIEW = "workflowType=machine_learning"


@cache
def git_commit() -> str | None:
    """The commit of the rqsid checkout that runs (with "-dirty" when tracked files differ), or None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo_root()), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def source_tags() -> dict[str, str]:
    """What code made a run: the rqsid version, and the git commit when there is a checkout (MLflow's tag gets the
    bare commit, which its UI shows and links; `rqsid.git_commit` says "-dirty" when tracked files differed)."""
    commit = git_commit()
    if not commit:
        return {"rqsid.version": __version__}
    return {"rqsid.version": __version__, GIT_COMMIT_TAG: commit.removesuffix("-dirty"), "rqsid.git_commit": commit}


def _create_store(tracking_uri: str, artifact_root: Path) -> None:
    """Create a new sqlite store with its artifact root in the home, so that the `Default` experiment MLflow
    makes with the store keeps its artifacts there too (MLflow's own default is ./mlruns of the cwd)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or Path(tracking_uri[len(prefix):]).exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(tracking_uri, artifact_root.as_uri())
    for key, value in EXPERIMENT_KIND.items():
        store.set_experiment_tag(store.DEFAULT_EXPERIMENT_ID, ExperimentTag(key, value))
    store.engine.dispose()


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
        _create_store(self.tracking_uri, self.artifact_root)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        _prepare_sqlite_store(self.tracking_uri, self.client)

    # ------------------------------------------------------------ experiments and runs

    def experiment(self, catalog_name: str) -> str:
        """The experiment of a catalog (created on first use, artifacts under the artifact root)."""
        found = self.client.get_experiment_by_name(catalog_name)
        if found is not None:
            for key, value in EXPERIMENT_KIND.items():
                if found.tags.get(key) != value:  # made by an older rqsid
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        location = (self.artifact_root / catalog_name).as_uri()
        try:
            return self.client.create_experiment(catalog_name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(catalog_name).experiment_id

    @contextmanager
    def start_run(self, name: str, experiment: str, nested: bool = False,
                  tags: dict[str, Any] | None = None) -> Iterator[mlflow.ActiveRun]:
        """A run in `experiment` (an id from `.experiment()`); nested=True makes it a child of the active run."""
        mlflow.set_tracking_uri(self.tracking_uri)
        owner = this_process(ProjectHome.default().root)  # a dead owner's runs are ended by tasks.recovery
        owner.note("mlflow", self.tracking_uri)
        tags = source_tags() | {OWNER_TAG: owner.token} | {k: str(v) for k, v in (tags or {}).items()}
        with mlflow.start_run(run_name=name, experiment_id=experiment, nested=nested, tags=tags) as run:
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

    def log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Metrics of a named run (not necessarily the active one: a flow's run while a stage run is active)."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], synchronous=True)

    def log_curve(self, run_id: str, prefix: str, history: list[Mapping[str, Any]], step_key: str | None = None) -> list[str]:
        """Step-wise metrics `{prefix}.{name}` of a training history, one step per record (`record[step_key]`, else
        its position from 1); list-valued fields become `{prefix}.l{n}.{name}`. Returns the metric names."""
        now = int(time.time() * 1000)
        metrics = []
        for position, record in enumerate(history, 1):
            step = int(record[step_key]) if step_key else position
            for name, value in curve_values(record, exclude={step_key, "epoch", "level", "seconds", "elapsed_s", "phase"}):
                metrics.append(Metric(f"{prefix}.{name}", value, now, step))
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000], synchronous=True)
        return sorted({m.key for m in metrics})

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
        return int(version.version)

    def version_tagged(self, name: str, key: str, value: str) -> int | None:
        """The model version of `name` whose tag `key` is `value` (the first one), or None."""
        try:
            found = self.client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
        except MlflowException:
            return None
        return min((int(v.version) for v in found), default=None)

    def describe_model_version(self, name: str, version: int, description: str, lineage: Mapping[str, str],
                               headline: Mapping[str, float]) -> None:
        """What a reviewer of the registry needs beside the model: lineage tags (`rqsid.lineage.*`: catalog,
        embedding, tokenizer, index, git commit), a few headline metrics rounded to 4 places, a description."""
        tags = {f"rqsid.lineage.{kind}": value for kind, value in lineage.items() if value}
        if git_commit():
            tags["rqsid.lineage.git_commit"] = git_commit()
        tags |= {key: f"{float(value):.4f}" for key, value in headline.items()}
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, value)
        self.client.update_model_version(name, str(version), description=description)

    def champion(self, name: str) -> tuple[int, dict[str, float]] | None:
        """(version, metrics of the run that registered it) of the model's "champion" alias, or None."""
        try:
            version = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            return None
        return int(version.version), dict(self.client.get_run(version.run_id).data.metrics)

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


def curve_values(record: Mapping[str, Any], exclude: set) -> Iterator[tuple[str, float]]:
    """(name, value) of a history record's numbers; lists by layer (`l1.name`), dicts by key (`key.name`)."""
    for name, value in record.items():
        if name in exclude or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield name.replace("@", "_at_"), float(value)
        elif isinstance(value, list):
            yield from ((f"l{n}.{name}", float(v)) for n, v in enumerate(value, 1) if isinstance(v, (int, float)))
        elif isinstance(value, Mapping):
            yield from ((f"{name}.{key}", v) for key, v in curve_values(value, exclude))


def report_metrics(report: dict, prefix: str) -> dict[str, float]:
    """Flatten a distribution report into MLflow metric names (counts stay in the JSON artifact)."""
    out = {f"{prefix}.collision_rate": float(report["collision_rate"])}
    for layer in report["layers"]:
        for key in LAYER_METRICS:
            value = layer.get(key)
            if value is not None:
                out[f"{prefix}.l{layer['level']}.{key}"] = float(value)
    return out

