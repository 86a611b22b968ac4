"""The audit trail of a night, as a reviewer finds it in the MLflow and Prefect UIs: the figures every decision
was made on, training curves, plots, lineage, registry descriptions and run summaries.

Real components: two nights of the nightly deployment on the session's Prefect server (the first on 400 items of
the synthetic shop, with a gate bound its layer 2 fails so that pruning runs; the second with 60 new items, so
that drift is detected and the tokenizer refitted), MLflow on sqlite, the real MLflow server and headless Chromium.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
from test_flows import CONFIG as FLOW_CONFIG

from rqsid.catalog import write_catalog, write_interactions
from synthetic_tables import shop

GATE = 0.4  # below the 0.50 layer-2 Gini of these SIDs: the first night's gate fails before pruning
# The RQ-VAE without its balancing (plain Lloyd seeding, no code-usage term) makes the hourglass this test audits;
# the balanced default keeps this shop's layer 2 near Gini 0.25
UNBALANCED = FLOW_CONFIG.quantizer.model_copy(update={"kmeans_balance": 0.0, "code_usage_weight": 0.0})
CONFIG = FLOW_CONFIG.model_copy(update={"quantizer": UNBALANCED,
                                        "gate": FLOW_CONFIG.gate.model_copy(update={"max_layer2_gini": GATE}),
                                        "prune": FLOW_CONFIG.prune.model_copy(update={"gini_threshold": GATE})})
CATALOG = "audit-shop"


@pytest.fixture(scope="module")
def nights(prefect_api, tmp_path_factory) -> list[dict]:
    """Two nights of catalog "audit-shop", each a run of the nightly deployment (as `rqsid nightly` makes them)."""
    from deployments.nightly import run_nightly_now

    items, interactions = shop(n_items=1100, seed=2)
    folder = tmp_path_factory.mktemp("audit")
    history = str(write_interactions(interactions, folder / "interactions.parquet"))
    # items 400-799: not the first 400 that test_flows' first night embeds (a shared store would reuse them)
    days = [items.slice(400, 400), pa.concat_tables([items.slice(400, 400), items.slice(1000, 60)])]  # 60 of 460 new
    out = []
    for day, table in enumerate(days, 1):
        (folder / f"day{day}").mkdir()
        catalog = str(write_catalog(table, folder / f"day{day}" / f"{CATALOG}.parquet"))
        out.append(run_nightly_now(catalog=catalog, interactions=history, config=CONFIG))
    return out


def _client():
    from tasks.tracking import Tracker

    return Tracker().client


def _tree(run_id: str) -> dict[str, object]:
    """A run and its descendants by path of run names: {"": nightly, "reindex": ..., "reindex/sids": ...}."""
    client = _client()
    root = client.get_run(run_id)
    tree, todo = {"": root}, [("", root)]
    while todo:
        path, run = todo.pop()
        for child in client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"):
            name = f"{path}/{child.info.run_name}".lstrip("/")
            tree[name] = child
            todo.append((name, child))
    return tree


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    client, found = _client(), set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(run_id, item.path) if item.is_dir else {item.path}
    return found


# ---------------------------------------------------------------- verdicts, in words a reviewer reads


def test_drift_verdicts_name_each_signal_over_its_bound_or_why_there_is_none():
    from flows.audit import drift_verdict
    from rqsid.config import DriftConfig

    drifted = {"drifted": True, "exceeded": ["new_share 0.130 > 0.1", "layer2_gini 0.700 > 0.6"]}
    assert drift_verdict(drifted, DriftConfig()) == "drift detected: new share 0.130 > 0.1; layer-2 Gini 0.700 > 0.6"
    calm = {"drifted": False, "exceeded": [], "new_share": 0.05, "recon_ratio": 1.02, "layer2_gini_merged": 0.31,
            "n_new": 15, "n_changed": 5, "n_items": 400}
    assert drift_verdict(calm, DriftConfig()) == ("no drift: 20 new or changed of 400 items; new share 0.050 <= 0.1, "
                                                  "reconstruction ratio 1.020 <= 1.9, layer-2 Gini 0.310 <= 0.6")


def test_gate_and_pruning_verdicts_carry_the_figures_and_bounds():
    from flows.audit import gate_verdict, pruning_verdict
    from rqsid.config import GateConfig

    failed = {"when": "before pruning", "success": False,
              "observed": {"collision_rate": 0.05, "layer2_gini": 0.444, "l1_utilisation": 1.0, "l2_utilisation": 0.01}}
    assert gate_verdict(failed, GateConfig()) == ("failed before pruning: layer-2 Gini 0.444 > 0.4; layer 2 utilisation "
                                                  "0.01 < 0.05 (collisions 0.05 <= 0.2)")
    before = {"collision_rate": 0.05, "layers": [{"gini": 0.3, "k": 256}, {"gini": 0.444, "k": 256}]}
    after = {"collision_rate": 0.08, "layers": [{"gini": 0.3, "k": 256}, {"gini": 0.39962, "k": 244}]}
    assert pruning_verdict(before, after, 12, False, True, 2) == (
        "K = 12 of 256 layer-2 tokens removed: layer-2 Gini 0.444 -> 0.3996, collisions 0.05 -> 0.08")
    assert pruning_verdict(before, before, 0, False, False, 2) == "not needed: the gate passed before pruning (K = 0)"
    assert pruning_verdict(before, before, 7, False, False, 2).startswith("kept the published pruning (K = 7)")


def test_promotion_verdicts_compare_with_the_champion():
    from flows.audit import promotion_verdict

    ours = {"recall@10": 0.0812, "ndcg@10": 0.045, "n": 5000}
    theirs = {"recall@10": 0.079, "ndcg@10": 0.05, "n": 5000}
    rule = "mean paired gain in recall@10 > 2 x its standard error, and > 0"
    assert promotion_verdict(1, True, None, 1, ours, None, "", "") == \
        "v1 is the first champion: valid Recall@10 0.0812, valid NDCG@10 0.0450 (5000 users)"
    won = promotion_verdict(2, True, 1, 2, ours, theirs, rule, "")
    assert won.startswith("v2 promoted to champion over v1: valid Recall@10 0.0812") and rule in won
    kept = promotion_verdict(2, False, 1, 1, theirs, ours, rule, "keeps its own index")
    assert kept.startswith("v2 not promoted, champion stays v1") and kept.endswith("(keeps its own index)")
    rebound = promotion_verdict(2, False, 1, 3, theirs, ours, rule, "rebound to today's index")
    assert "the champion now serves as v3 (rebound to today's index)" in rebound


def test_summary_artifact_keys_are_what_prefect_accepts():
    from flows.audit import artifact_key

    assert artifact_key("drift_watch", "Amazon_Beauty.2014") == "drift-watch-amazon-beauty-2014"


# ---------------------------------------------------------------- two nights, as a reviewer audits them


def test_a_night_started_by_hand_is_a_run_of_the_nightly_deployment(nights):
    from prefect import get_client

    from deployments.nightly import NIGHTLY_NAME

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"nightly/{NIGHTLY_NAME}")
        for night in nights:
            run = client.read_flow_run(_tree(night["mlflow_run_id"])[""].data.tags["prefect.flow_run_id"])
            assert run.deployment_id == deployment.id and run.state.is_completed() and "manual" in run.tags
            assert run.parameters["catalog"].endswith(f"{CATALOG}.parquet")


def test_the_nightly_run_counts_the_compute_of_the_flows_it_ran(nights):
    tree = _tree(nights[0]["mlflow_run_id"])
    metrics = tree[""].data.metrics
    flows = {name: tree[name].data.metrics for name in ("drift_watch", "reindex", "retrain")}
    compute = sum(m["time.compute_s"] for m in flows.values())
    assert metrics["time.compute_s"] == pytest.approx(compute, abs=0.01) and compute > 0
    assert metrics["time.orchestration_share"] == pytest.approx(1 - compute / metrics["time.total_s"], abs=1e-3)
    assert 0 < metrics["time.orchestration_share"] < 1
    assert [f["flow"] for f in nights[0]["timing"]["flows"]] == ["drift_watch", "reindex", "retrain"]


def test_the_gate_figures_before_and_after_pruning_are_metrics_of_the_sids_run(nights):
    tree = _tree(nights[0]["mlflow_run_id"])
    sids = tree["reindex/sids"].data.metrics
    assert sids["before_pruning.l2.gini"] > GATE >= sids["sids.l2.gini"]  # the hourglass found, pruned, passed
    assert sids["gate.before_pruning.layer2_gini"] == pytest.approx(sids["before_pruning.l2.gini"])
    assert sids["gate.after_pruning.layer2_gini"] == pytest.approx(sids["sids.l2.gini"])
    assert (sids["gate.before_pruning.passed"], sids["gate.after_pruning.passed"]) == (0.0, 1.0)
    assert sids["k"] == sids["gate.after_pruning.k"] == nights[0]["reindex"]["k"] > 0
    for prefix in ("before_pruning", "sids"):
        per_layer = {f"{prefix}.l{n}.{key}" for n in (1, 2, 3) for key in ("gini", "entropy_norm")}
        assert per_layer | {f"{prefix}.collision_rate"} <= set(sids)
    assert {"plots/pruning_before_after.png", "reports/before_pruning.json", "reports/sids.json"} <= \
        _artifacts(tree["reindex/sids"].info.run_id)
    for run in (tree["reindex"], tree[""]):  # the decisions on the flow's run and on the night's
        tags = run.data.tags
        assert tags["rqsid.decision.gate"].startswith("passed after pruning: layer-2 Gini")
        assert tags["rqsid.decision.pruning"].startswith(f"K = {int(sids['k'])} of 64 layer-2 tokens removed: layer-2 Gini ")
    assert tree["reindex"].data.metrics["prune.k"] == sids["k"]


def test_drift_verdicts_are_tags_and_metrics_of_the_drift_watch_run(nights):
    first, second = (_tree(night["mlflow_run_id"])["drift_watch"] for night in nights)
    assert first.data.tags["rqsid.decision.drift"].startswith("no published index yet")
    assert second.data.tags["rqsid.decision.drift"] == "drift detected: new share 0.130 > 0.1"
    assert second.data.metrics["drift.new_share"] == pytest.approx(60 / 460)
    assert second.data.metrics["drift.detected"] == 1.0 and second.data.metrics["drift.n_new"] == 60
    refit = _tree(nights[1]["mlflow_run_id"])["reindex"].data.tags["rqsid.decision.tokenizer"]
    assert refit == "fitted a new tokenizer: a refit was requested"  # the nightly asks for one on drift


def test_training_curves_are_step_wise_metrics(nights):
    client = _client()
    tree = _tree(nights[0]["mlflow_run_id"])
    tokenizer = tree["reindex/tokenizer"].info.run_id
    recon = client.get_metric_history(tokenizer, "rqvae.recon")
    fitted = CONFIG.quantizer.warmup_epochs + CONFIG.quantizer.epochs
    assert len(recon) == len({m.step for m in recon}) and 1 < len(recon) <= fitted  # early stopping may end it sooner
    assert len(client.get_metric_history(tokenizer, "rqvae.l2.utilisation")) == len(recon) - CONFIG.quantizer.warmup_epochs
    train = tree["retrain/train"].info.run_id
    epochs = CONFIG.generator.epochs
    assert [m.step for m in client.get_metric_history(train, "epoch.loss")] == list(range(1, epochs + 1))
    assert len(client.get_metric_history(train, "epoch.valid.recall_at_10")) >= 1
    assert "plots/learning_curve.png" in _artifacts(train)


def test_the_trend_plot_spans_the_index_versions(nights):
    from rqsid.index import balance_trend
    from tasks.common import registry

    points = balance_trend(registry(CATALOG), 14)
    assert [p["version"] for p in points] == [n["reindex"]["index_version"] for n in nights]
    assert points[0]["unpruned"][1]["gini"] > GATE >= points[0]["layers"][1]["gini"]
    for night in nights:
        assert "plots/trend_balance.png" in _artifacts(_tree(night["mlflow_run_id"])["reindex"].info.run_id)


def test_a_registered_version_carries_lineage_headline_figures_and_a_description(nights):
    from flows.retrain import model_name
    from tasks.tracking import git_commit

    client = _client()
    for night in nights:
        model, index = night["retrain"], night["reindex"]
        version = client.get_model_version(model_name(CATALOG), str(model["model_version"]))
        manifest = json.loads((Path(index["index_path"]) / "manifest.json").read_text())
        tags = version.tags
        assert tags["rqsid.lineage.index"] == index["index_version"]
        for kind, key in (("catalog", "catalog"), ("embedding", "embeddings"), ("tokenizer", "tokenizer")):
            assert tags[f"rqsid.lineage.{kind}"] == manifest["versions"][key]
        assert tags["rqsid.lineage.generator"] == model["generator_version"]
        assert tags["rqsid.lineage.git_commit"] == git_commit()
        recall = model["metrics"]["valid"]["all"]["recall@10"]
        assert tags["valid.recall_at_10"] == f"{recall:.4f}"
        # a handful of tags, each figure rounded for reading (issue 16 found 31 tags of 17-digit floats)
        assert not [key for key in tags if key.startswith("rqsid.metric.")] and len(tags) <= 20
        figures = [v for v in tags.values() if v.replace(".", "", 1).isdigit()]
        assert figures and all(len(v.partition(".")[2]) <= 4 for v in figures)
        assert index["index_version"] in version.description and f"Recall@10 {recall:.4f}" in version.description
        promotion = _tree(night["mlflow_run_id"])["retrain"].data.tags["rqsid.decision.promotion"]
        assert f"Promotion: {promotion}." in version.description
    assert nights[0]["retrain"]["promoted"]
    assert _tree(nights[0]["mlflow_run_id"])["retrain"].data.tags["rqsid.decision.promotion"].startswith(
        "v1 is the first champion: valid Recall@10")


def test_every_flow_run_has_a_markdown_summary_in_prefect_and_in_mlflow(nights):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.audit import artifact_key

    tree = _tree(nights[1]["mlflow_run_id"])
    with get_client(sync_client=True) as client:
        for name in ("", "drift_watch", "reindex", "retrain"):
            run = tree[name]
            flow_run_id = run.data.tags["prefect.flow_run_id"]
            (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            assert artifact.type == "markdown" and artifact.key == artifact_key(run.info.run_name, CATALOG)
            assert artifact.data == run.data.tags["mlflow.note.content"]  # the MLflow run's description
            assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in artifact.data
            assert f"/runs/flow-run/{flow_run_id}" in artifact.data
    night = tree[""].data.tags["mlflow.note.content"]
    assert night.startswith(f"## nightly of catalog `{CATALOG}`: completed")
    for verdict in ("drift detected: new share 0.130 > 0.1", "fitted a new tokenizer", "published index",
                    str(nights[1]["reindex"]["index_path"]), "v2 "):
        assert verdict in night


# ---------------------------------------------------------------- the real MLflow UI in a real browser


@pytest.fixture(scope="module")
def chromium() -> str:
    from browser import find_chromium

    binary, why = find_chromium()
    if binary is None:
        pytest.skip(f"no headless browser for the UI test: {why}")
    return binary


@pytest.fixture(scope="module")
def mlflow_ui(nights):
    """The real MLflow server (what `rqsid ui` starts) over the session's store, on a free 127.0.0.1 port."""
    from rqsid.home import ProjectHome
    from tasks.services import free_port, start_mlflow_ui

    with start_mlflow_ui(ProjectHome.default(), free_port(), timeout_s=150) as server:
        yield server.url


def _api(base: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as answer:
        return json.loads(answer.read())


def test_the_mlflow_ui_shows_the_sids_run_with_its_figures_plots_and_tags(nights, mlflow_ui, chromium, tmp_path):
    from browser import chromium_page, open_mlflow
    from matplotlib.image import imread

    sids = _tree(nights[0]["mlflow_run_id"])["reindex/sids"]
    run = _api(mlflow_ui, "runs/get", run_id=sids.info.run_id)["run"]
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"before_pruning.l2.gini", "sids.l2.gini", "gate.before_pruning.passed", "gate.after_pruning.passed", "k"} <= metrics
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["rqsid.stage"] == "sids" and tags["mlflow.source.git.commit"] and tags["rqsid.lineage.tokenizer"]
    plots = {f["path"] for f in _api(mlflow_ui, "artifacts/list", run_id=sids.info.run_id, path="plots")["files"]}
    assert plots == {"plots/pruning_before_after.png"}
    experiment = _api(mlflow_ui, "experiments/get", experiment_id=sids.info.experiment_id)["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]

    with chromium_page(chromium) as page:
        open_mlflow(page, f"{mlflow_ui}/#/experiments/{sids.info.experiment_id}/runs/{sids.info.run_id}", "sids")
        for shown in ("before_pruning.l2.gini", "gate.after_pruning.passed", "rqsid.stage", "Model training"):
            assert page.get_by_text(shown, exact=True).first.is_visible(), shown
        assert not page.get_by_text("Evaluation runs", exact=True).count()  # the GenAI view's menu is not shown
        page.screenshot(path=tmp_path / "sids-overview.png")
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("plots", exact=True).click()
        page.get_by_text("pruning_before_after.png", exact=True).click()
        figure = page.locator("img[src^='blob:']").first
        figure.wait_for()
        assert figure.evaluate("image => image.complete && image.naturalWidth") > 1000  # the figure itself, loaded
        page.screenshot(path=tmp_path / "sids-artifacts.png")
    for shot in ("sids-overview.png", "sids-artifacts.png"):
        pixels = imread(tmp_path / shot)
        assert pixels.shape[:2] == (900, 1400) and pixels.std() > 0.05  # a page was drawn, not a blank one
