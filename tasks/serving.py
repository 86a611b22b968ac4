"""The generator as a product: the MLflow pyfunc model that serves a bundle (rqsid.generator.bundle), its
signature, building a bundle from an index version, loading the registered champion, and registering.
A process that loads the model imports this module: it imports no Prefect (which would want a home).

Request (pyfunc `predict`, or `POST /invocations` of `mlflow models serve`): a DataFrame with a column
`history` (item ids, oldest first) and, for a search model, `query` (text); params `k` (default 10),
`beam_size` (0 = the model's) and `exclude_history` (default true: no item of the request's own history is
recommended back). Response: one row per request with `item_ids`, `titles`, `scores`
(log-probabilities, best first), `sids`, `unknown_history_items` (skipped) and `note`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rqsid import RqsidError
from rqsid.catalog import read_interactions
from rqsid.generator.bundle import Bundle, load_bundle, make_bundle, save_bundle
from rqsid.generator.cases import Cases, last_seq_per_user, per_case_metrics
from rqsid.home import ProjectHome
from rqsid.index import index_manifest, item_embeddings, item_titles, read_index_sids
from rqsid.versioning import file_digest
from tasks.common import store
from tasks.tracking import CHAMPION, Tracker, default_pip_requirements, mlflow  # mlflow imported after its environment is set

if TYPE_CHECKING:
    from tasks.generator import GeneratorVersion

MODEL_CODE = Path(__file__).with_name("retriever_model.py")  # what MLflow runs to load a registered generator
REGISTRATION_TAG = "rqsid.registration."
# where a registered model comes from, in its MLmodel metadata
BUNDLE_LINEAGE = ("catalog_name", "catalog_version", "index_version", "trained_index_version", "generator_version",
                  "embeddings_version")


def model_name(catalog_name: str) -> str:
    return f"{catalog_name}-generator"


# ---------------------------------------------------------------- the pyfunc model


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(Array(DataType.string), "history"), ColSpec(DataType.string, "query", required=False)])
    outputs = Schema([
        ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.string), "titles"),
        ColSpec(Array(DataType.double), "scores"), ColSpec(Array(DataType.string), "sids"),
        ColSpec(DataType.long, "unknown_history_items"), ColSpec(DataType.string, "note"),
    ])
    params = ParamSchema([ParamSpec("k", DataType.long, 10), ParamSpec("beam_size", DataType.long, 0),
                          ParamSpec("exclude_history", DataType.boolean, True)])
    return ModelSignature(inputs, outputs, params)


class RetrieverModel(mlflow.pyfunc.PythonModel):
    """Serves the bundle logged as the artifact "generator"."""

    def load_context(self, context) -> None:
        self.bundle = load_bundle(context.artifacts["generator"])
        self.retriever = self.bundle.retriever()

    # The DataFrame type hint is what MLflow wants to see (else it warns on every import).
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        params = params or {}
        histories = [[str(item) for item in _as_list(h)] for h in model_input["history"]]
        queries = None
        if "query" in model_input.columns and model_input["query"].notna().any():
            queries = [q if isinstance(q, str) else None for q in model_input["query"]]
        try:
            answers = self.retriever.recommend(histories, k=int(params.get("k") or 10), queries=queries,
                                               beam_size=int(params.get("beam_size") or 0) or None,
                                               exclude_history=bool(params.get("exclude_history", True)))
        except RqsidError as err:  # a bad request, not a server fault: HTTP 400 when served
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame({
            "item_ids": [a.item_ids for a in answers],
            "titles": [self.bundle.title_of(a.item_ids) for a in answers],
            "scores": [a.scores for a in answers],
            "sids": [a.sids for a in answers],
            "unknown_history_items": [a.unknown_history_items for a in answers],
            "note": [a.note for a in answers],
        })


def _as_list(value) -> list:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return list(value)


# ---------------------------------------------------------------- bundles from the version store


def generator_bundle(generator: GeneratorVersion, index_dir: Path, interactions_file: Path,
                     home: ProjectHome | None = None) -> Bundle:
    """The stored generator with its index version's SIDs, trie and titles, and its training cut-off."""
    from rqsid.generator.data import SidVocab
    from rqsid.generator.train import load_generator

    table = read_index_sids(index_dir)
    manifest = index_manifest(index_dir)
    trained = load_generator(generator.model_dir, SidVocab.from_sid_table(table))
    meta = {
        "catalog_name": manifest["catalog_name"],
        "catalog_version": manifest["versions"]["catalog"],
        "embeddings_version": manifest["versions"]["embeddings"],
        "index_version": Path(index_dir).name,
        "trained_index_version": Path(index_dir).name,
        "generator_version": generator.version,
        "interactions": file_digest(interactions_file),
        "embed": (manifest.get("config") or {}).get("embed", {}),
    }
    through = last_seq_per_user(read_interactions(interactions_file))
    return make_bundle(trained, table, item_titles(index_dir, store(home)), meta, through)


def serving_index(bundle: Bundle, index_dir: Path, home: ProjectHome | None = None) -> tuple[Bundle, str]:
    """The bundle serving `index_dir` when that index kept every SID the model knows (the stable path: new
    items become recommendable before a retrain); otherwise the bundle unchanged. Returns why, too."""
    if bundle.index_version == Path(index_dir).name:
        return bundle, f"serves its own index {bundle.index_version}"
    features = item_embeddings(index_dir, store(home)) if bundle.trained.cfg.item_text else None
    try:
        served = bundle.serving(read_index_sids(index_dir), Path(index_dir).name, features, item_titles(index_dir, store(home)))
    except RqsidError as err:
        return bundle, f"keeps index {bundle.index_version}: {err}"
    return served, f"rebound from index {bundle.index_version} to {served.index_version} (every SID kept)"


# ---------------------------------------------------------------- the registry


@dataclass
class Registered:
    version: int
    bundle: Bundle
    registration: dict[str, float]  # recall_at_10, ndcg_at_10, n: what it scored on the contest cases when registered

    @property
    def recall_at_10(self) -> float | None:
        return self.registration.get("recall_at_10")


def load_registered(uri: str) -> Bundle:
    """The bundle inside a registered (or logged) rqsid model: `models:/NAME@ALIAS`, `runs:/...`, a folder."""
    model = mlflow.pyfunc.load_model(uri)
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, RetrieverModel):
        raise RqsidError(f"{uri} is not an rqsid retriever model (logged with {type(python_model).__name__})")
    return python_model.bundle


def champion_of(tracker: Tracker, name: str) -> Registered | None:
    """The model version the "champion" alias points at, with its bundle; None when there is none yet (or it
    was registered before models carried their bundle)."""
    from mlflow.exceptions import MlflowException

    try:
        version = tracker.client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    try:
        bundle = load_registered(tracker.model_uri(name))
    except RqsidError:
        return None
    figures = {k[len(REGISTRATION_TAG):]: float(v) for k, v in version.tags.items() if k.startswith(REGISTRATION_TAG)}
    return Registered(int(version.version), bundle, figures)


def register_bundle(tracker: Tracker, bundle: Bundle, name: str, registration: dict[str, float],
                    metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> int:
    """Log the bundle as a pyfunc model (signature, pinned requirements, versions in its metadata) in the
    active run and register it; its registration figures become version tags."""
    registration = metric_names(registration)
    meta = {f"rqsid.{key}": bundle.meta.get(key) for key in BUNDLE_LINEAGE} | {"rqsid.registration": registration}
    example = pd.DataFrame({"history": [[str(i) for i in bundle.table.item_ids[:3]]]})
    if bundle.trained.cfg.use_query:
        example["query"] = [str(bundle.titles[0]) or "product"]
    # the version's tags are set with it, in one transaction: a lookup by tag never finds a half-made version
    version_tags = {"rqsid.index_version": bundle.index_version, "rqsid.trained_index_version": bundle.trained_index_version,
                    **{REGISTRATION_TAG + key: _rounded(value) for key, value in registration.items()}, **(tags or {})}
    with tempfile.TemporaryDirectory(prefix="rqsid-bundle-") as folder:
        version = tracker.register_generator(save_bundle(bundle, Path(folder) / "bundle"), name, metrics or {},
                                             default_pip_requirements(), python_model=str(MODEL_CODE),
                                             signature=signature(), metadata=meta, input_example=(example, {"k": 10}),
                                             tags={key: str(value) for key, value in version_tags.items()})
    return version


# ---------------------------------------------------------------- evaluation


def _rounded(value: float) -> str:
    """A figure as a reviewer reads it in the registry: 4 places, counts as integers."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.4f}"


def metric_names(figures: dict[str, float]) -> dict[str, float]:
    """{"recall@10": ...} -> {"recall_at_10": ...}: MLflow names cannot hold '@'."""
    return {key.replace("@", "_at_"): float(value) for key, value in figures.items()}



def evaluate(bundle: Bundle, cases: Cases) -> dict[str, np.ndarray]:
    """Per-case Recall@10 / NDCG@10 of a bundle, decoded with its own index."""
    return per_case_metrics(bundle.retriever(), cases)
