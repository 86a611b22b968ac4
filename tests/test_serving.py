"""The registered generator really serves: a real sqlite MLflow registry, a FRESH Python process loading
`models:/<name>@champion`, and a real `mlflow models serve` process answering `POST /invocations` on a free
loopback port (stopped at the end, the port free again). The model carries item text features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from test_generator_retriever import HYBRID, features
from test_generator_train import N_ITEMS, synthetic

from rqsid.generator.bundle import make_bundle
from rqsid.generator.cases import last_seq_per_user
from rqsid.generator.data import SidVocab, sequences_from_interactions
from rqsid.generator.train import train_generator
from rqsid.home import ProjectHome
from rqsid.quantize.base import torch_threads
from tasks.services import free_port, port_in_use, start_model_server
from tasks.serving import champion_of, load_registered, model_name, register_bundle
from tasks.tracking import Tracker

NAME = model_name("toy")
HISTORIES = [["it1", "it2", "it3"], ["nope", "it7"], ["it11"]]
PREDICT = """
import json, sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"history": json.loads(sys.argv[2])}), params={"k": 5})
print(json.dumps({"answers": out.to_dict(orient="records"), "metadata": model.metadata.metadata,
                  "prefect_imported": "prefect" in sys.modules}))
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A home of its own with one registered, promoted generator (bundle with item text features)."""
    home = ProjectHome(tmp_path_factory.mktemp("serving-home")).ensure()
    table, inter, _ = synthetic()
    vocab = SidVocab.from_sid_table(table)
    with torch_threads(1):
        trained = train_generator(sequences_from_interactions(inter, vocab), vocab, HYBRID, progress=False,
                                  log=lambda _: None, item_features=features(N_ITEMS))
    meta = {"catalog_name": "toy", "catalog_version": "catalog-toy", "index_version": "index-toy",
            "trained_index_version": "index-toy", "generator_version": "generator-toy"}
    bundle = make_bundle(trained, table, np.array([f"Toy {i}" for i in table.item_ids], dtype=object), meta,
                         last_seq_per_user(inter))
    tracker = Tracker(home.mlflow_uri, home.mlflow_artifacts)
    with tracker.start_run("retrain", tracker.experiment("toy")):
        version = register_bundle(tracker, bundle, NAME, {"recall@10": 0.5, "ndcg@10": 0.3, "n": 400})
    tracker.promote(NAME, version)
    with torch_threads(1):
        expected = bundle.retriever().recommend(HISTORIES, k=5)
        expected_with_history = bundle.retriever().recommend(HISTORIES, k=5, exclude_history=False)
    assert not any(set(e.item_ids) & set(h) for e, h in zip(expected, HISTORIES, strict=True))
    yield home, tracker, version, (expected, expected_with_history)
    mlflow.set_tracking_uri(ProjectHome.default().mlflow_uri)  # back to the session's store


def test_the_champion_predicts_in_a_fresh_process(registry):
    home, _, version, (expected, _) = registry
    env = {**os.environ, **home.environment(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PREDICT, f"models:/{NAME}@champion", json.dumps(HISTORIES)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    answers = result["answers"]
    assert [a["item_ids"] for a in answers] == [e.item_ids for e in expected]
    np.testing.assert_allclose([a["scores"] for a in answers], [e.scores for e in expected], atol=1e-4)
    assert answers[0]["titles"] == [f"Toy {i}" for i in expected[0].item_ids]
    assert [a["unknown_history_items"] for a in answers] == [0, 1, 0]
    assert result["metadata"]["rqsid.index_version"] == "index-toy"
    assert result["metadata"]["rqsid.catalog_version"] == "catalog-toy"
    assert not result["prefect_imported"]  # a serving process stays light


def test_the_registered_model_has_a_signature_and_its_index_in_metadata_and_tags(registry):
    home, tracker, version, _ = registry
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version}")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["history", "query"]
    assert {p.name: p.default for p in info.signature.params} == {"k": 10, "beam_size": 0, "exclude_history": True}
    assert "item_ids" in info.signature.outputs.input_names()
    assert info.metadata["rqsid.trained_index_version"] == "index-toy"
    champion = champion_of(tracker, NAME)
    assert champion.version == version and champion.recall_at_10 == 0.5
    assert champion.bundle.index_version == "index-toy"
    tags = tracker.client.get_model_version(NAME, str(version)).tags
    assert tags["rqsid.index_version"] == "index-toy"


def _post(url: str, body: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_mlflow_models_serve_answers_invocations_and_frees_its_port(registry):
    home, _, _, (expected, expected_with_history) = registry
    port = free_port()
    server = start_model_server(home, f"models:/{NAME}@champion", port)
    try:
        status, body = _post(server.url, {"dataframe_records": [{"history": h} for h in HISTORIES], "params": {"k": 5}})
        assert status == 200, body
        answers = body["predictions"]
        assert [a["item_ids"] for a in answers] == [e.item_ids for e in expected]
        assert [a["unknown_history_items"] for a in answers] == [0, 1, 0]
        assert answers[2]["titles"][0] == f"Toy {expected[2].item_ids[0]}"
        body = {"dataframe_records": [{"history": h} for h in HISTORIES], "params": {"k": 5, "exclude_history": False}}
        status, body = _post(server.url, body)
        assert status == 200 and [a["item_ids"] for a in body["predictions"]] == [e.item_ids for e in expected_with_history]
        status, body = _post(server.url, {"dataframe_records": [{"history": []}]})
        assert status == 400 and "empty" in body  # a bad request, said so
    finally:
        server.stop()
    assert not port_in_use(port)


def test_a_model_without_a_bundle_is_refused_by_name(tmp_path):
    from rqsid import RqsidError

    (tmp_path / "weights.json").write_text("{}")
    mlflow.pyfunc.save_model(tmp_path / "model", python_model=mlflow.pyfunc.PythonModel(),
                             artifacts={"generator": str(tmp_path / "weights.json")}, pip_requirements=[])
    with pytest.raises(RqsidError, match="not an rqsid retriever model"):
        load_registered(str(tmp_path / "model"))
