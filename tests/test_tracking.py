"""MLflow adapter against a real sqlite store and local artifacts in a temporary folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from rqsid import RqsidError
from rqsid.config import RqsidConfig, load_config
from rqsid.home import ProjectHome, repo_root
from rqsid.metrics import distribution_report
from synthetic_tables import sid_table
from tasks.tracking import EXPERIMENT_KIND, GIT_COMMIT_TAG, LAYER_METRICS, Tracker, git_commit


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "artifacts")


@pytest.fixture(scope="module")
def report() -> dict:
    table = sid_table(n=4000)
    return distribution_report(table.codes, table.level_sizes)


def _artifact_paths(tracker: Tracker, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for entry in tracker.client.list_artifacts(run_id, path):
        out |= _artifact_paths(tracker, run_id, entry.path) if entry.is_dir else {entry.path}
    return out


def test_default_store_lives_in_the_project_home(project_home):
    tracker = Tracker()
    assert tracker.tracking_uri == ProjectHome.default().mlflow_uri
    assert tracker.artifact_root == project_home.mlflow_artifacts
    experiment = tracker.client.get_experiment(tracker.experiment("beauty"))
    assert experiment.artifact_location == (project_home.mlflow_artifacts / "beauty").as_uri()


def test_every_experiment_opens_in_the_training_view_with_its_artifacts_in_the_home(tracker):
    default = tracker.client.get_experiment("0")  # made by MLflow with the store
    assert default.name == "Default" and default.artifact_location == (tracker.artifact_root / "0").as_uri()
    for experiment in (default, tracker.client.get_experiment(tracker.experiment("kinds"))):
        assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]


def test_an_experiment_made_without_a_kind_gets_one(tracker):
    old = tracker.client.create_experiment("made-by-an-older-rqsid")
    assert "mlflow.experimentKind" not in tracker.client.get_experiment(old).tags
    assert tracker.experiment("made-by-an-older-rqsid") == old
    assert tracker.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_one_experiment_per_catalog(tracker):
    first = tracker.experiment("scientific")
    assert tracker.experiment("scientific") == first
    assert tracker.experiment("beauty") != first


def test_run_records_config_report_lineage_and_artifacts(tracker, report, tmp_path):
    config = load_config(overrides={"quantizer.levels": 3, "gate.max_layer2_gini": 0.4})
    extra = tmp_path / "index"
    extra.mkdir()
    (extra / "sids.parquet").write_bytes(b"PAR1")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with tracker.start_run("reindex", tracker.experiment("scientific"), tags={"trigger": "test"}) as run:
        tracker.log_config(config)
        logged = tracker.log_report(report, "raw")
        tracker.set_lineage(catalog="cat-1", embedding="emb-2", prefect_flow_run_id="flow-3")
        tracker.log_artifact(extra, "index")
        tracker.log_artifact(note)
    stored = tracker.client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params["gate.max_layer2_gini"] == "0.4"
    assert stored.data.params["quantizer.hidden_dims"] == json.dumps(config.quantizer.hidden_dims)
    assert set(stored.data.params) == set(config.flat())
    for layer in report["layers"]:
        for key in LAYER_METRICS:
            assert stored.data.metrics[f"raw.l{layer['level']}.{key}"] == pytest.approx(layer[key])
    assert stored.data.metrics["raw.collision_rate"] == pytest.approx(report["collision_rate"])
    assert logged == {k: v for k, v in stored.data.metrics.items() if k.startswith("raw.")}
    assert stored.data.tags["rqsid.lineage.catalog"] == "cat-1"
    assert stored.data.tags["rqsid.lineage.embedding"] == "emb-2"
    assert stored.data.tags["prefect.flow_run_id"] == "flow-3"
    assert stored.data.tags["trigger"] == "test"
    head = subprocess.run(["git", "-C", str(repo_root()), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert head and stored.data.tags[GIT_COMMIT_TAG] == head == git_commit().removesuffix("-dirty")
    assert stored.data.tags["rqsid.git_commit"] == git_commit()  # "-dirty" when tracked files differ from the commit
    assert _artifact_paths(tracker, run.info.run_id) == {
        "config.json", "reports/raw.json", "index/index/sids.parquet", "note.txt"
    }
    saved = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reports/raw.json",
                                                                 dst_path=str(tmp_path / "dl"))).read_text())
    assert saved["layers"][1]["counts"] == report["layers"][1]["counts"]
    assert stored.info.artifact_uri.startswith(tracker.artifact_root.as_uri())


def test_a_training_history_becomes_step_wise_metrics(tracker):
    history = [{"phase": "warmup", "epoch": 1, "loss": 0.9, "seconds": 0.1},
               {"phase": "train", "epoch": 1, "loss": 0.5, "recon": 0.4, "utilisation": [1.0, 0.75], "seconds": 0.1},
               {"phase": "train", "epoch": 2, "loss": 0.3, "recon": 0.2, "utilisation": [1.0, 0.5], "seconds": 0.1}]
    with tracker.start_run("fit", tracker.experiment("scientific")) as run:
        names = tracker.log_curve(run.info.run_id, "rqvae", history)
    assert names == ["rqvae.l1.utilisation", "rqvae.l2.utilisation", "rqvae.loss", "rqvae.recon"]
    steps = {m.step: m.value for m in tracker.client.get_metric_history(run.info.run_id, "rqvae.loss")}
    assert steps == {1: 0.9, 2: 0.5, 3: 0.3}  # warm-up epochs first, one step per record
    assert [m.value for m in tracker.client.get_metric_history(run.info.run_id, "rqvae.l2.utilisation")] == [0.75, 0.5]
    epochs = [{"epoch": 2, "loss": 4.0, "valid": {"recall@10": 0.1, "ndcg@10": 0.05}, "elapsed_s": 3.0}]
    with tracker.start_run("train", tracker.experiment("scientific")) as run:
        assert tracker.log_curve(run.info.run_id, "epoch", epochs, step_key="epoch") == [
            "epoch.loss", "epoch.valid.ndcg_at_10", "epoch.valid.recall_at_10"]
    (point,) = tracker.client.get_metric_history(run.info.run_id, "epoch.valid.recall_at_10")
    assert (point.step, point.value) == (2, 0.1)


def test_nested_runs_link_to_their_parent(tracker):
    experiment = tracker.experiment("scientific")
    with tracker.start_run("study", experiment) as parent, tracker.start_run("k=8", experiment, nested=True) as child:
        tracker.log_config(RqsidConfig())
    stored = tracker.client.get_run(child.info.run_id)
    assert stored.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_logging_outside_a_run_is_a_user_error(tracker, report):
    with pytest.raises(RqsidError, match="no active MLflow run"):
        tracker.log_report(report, "raw")


def test_missing_artifact_is_a_user_error(tracker, tmp_path):
    with tracker.start_run("bad", tracker.experiment("scientific")), pytest.raises(RqsidError, match="does not exist"):
        tracker.log_artifact(tmp_path / "absent.bin")


def _generator_dir(root: Path, label: str) -> Path:
    folder = root / f"generator-{label}"
    folder.mkdir()
    (folder / "weights.json").write_text(json.dumps({"label": label}))
    return folder


def test_register_promote_and_read_the_champion(tracker, tmp_path, monkeypatch):
    # A loader module, importable by MLflow's pyfunc when it loads the champion.
    (tmp_path / "toy_loader.py").write_text(
        "import json, pathlib\n"
        "class Echo:\n"
        "    def __init__(self, folder):\n"
        "        self.label = json.loads((pathlib.Path(folder) / 'weights.json').read_text())['label']\n"
        "    def predict(self, frame):\n"
        "        return [self.label] * len(frame)\n"
        "def load(folder):\n"
        "    return Echo(folder)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    experiment = tracker.experiment("scientific")
    name = "scientific-generator"
    assert tracker.champion(name) is None
    versions = {}
    for label, recall in (("first", 0.05), ("second", 0.07)):
        with tracker.start_run(f"retrain-{label}", experiment):
            versions[label] = tracker.register_generator(
                _generator_dir(tmp_path, label), name, {"recall_10": recall},
                pip_requirements=["torch==2.13.0"], loader="toy_loader:load",
            )
    assert versions == {"first": 1, "second": 2}
    assert tracker.champion(name) is None  # registering does not promote

    tracker.promote(name, versions["first"])
    assert tracker.champion(name) == (1, {"recall_10": 0.05})
    tracker.promote(name, versions["second"])
    assert tracker.champion(name) == (2, {"recall_10": 0.07})

    model = mlflow.pyfunc.load_model(tracker.model_uri(name))
    assert model.predict(pd.DataFrame({"history": [["1", "2"], ["3"]]})) == ["second", "second"]
    folder = Path(model.unwrap_python_model().model_dir)
    assert json.loads((folder / "weights.json").read_text()) == {"label": "second"}

    with pytest.raises(RqsidError, match="has no version 9"):
        tracker.promote(name, 9)


def test_a_model_version_carries_lineage_headline_figures_and_a_description(tracker, tmp_path):
    name = "described-generator"
    with tracker.start_run("retrain", tracker.experiment("scientific")):
        version = tracker.register_generator(_generator_dir(tmp_path, "d"), name,
                                             {"valid.all.recall_at_10": 0.0812345678, "test.all.ndcg_at_10": 0.04},
                                             pip_requirements=["torch==2.13.0"])
    tracker.describe_model_version(name, version, "trained on index-1 of scientific; promoted",
                                   {"catalog": "catalog-1", "index": "index-1", "tokenizer": None},
                                   {"valid.recall_at_10": 0.0812345678})
    stored = tracker.client.get_model_version(name, str(version))
    assert stored.description == "trained on index-1 of scientific; promoted"
    assert stored.tags["rqsid.lineage.catalog"] == "catalog-1" and stored.tags["rqsid.lineage.index"] == "index-1"
    assert "rqsid.lineage.tokenizer" not in stored.tags  # an unknown version is left out, not written as "None"
    assert stored.tags["rqsid.lineage.git_commit"] == git_commit()
    assert stored.tags["valid.recall_at_10"] == "0.0812"
    assert not [key for key in stored.tags if key.startswith("rqsid.metric.")]
