"""The flows against real components: the session's Prefect server, a Dask LocalCluster, Great Expectations,
MLflow on sqlite, on a synthetic shop of 1,100 items (400 on the first day) and the demo catalog.

Every test that changes a published index works on a catalog of its own (the catalog's name is its file's
stem), so the tests pass in any order; they share the version store, so a test's first night costs little
when another test already embedded and fitted the same items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rqsid.catalog import write_catalog
from rqsid.config import RqsidConfig
from rqsid.sids import read_sids
from synthetic_tables import shop
from tasks.common import GateFailed, registry, store

# Small and fast, still the real models: a 3-level RQ-VAE over 64 codes, a short generator run; one torch
# thread each (a runtime setting, not part of any version id) so that a busy machine does not slow them down.
CONFIG = RqsidConfig.model_validate({
    "quantizer": {"codebook_size": 64, "epochs": 15, "hidden_dims": [128, 64], "latent_dim": 16, "batch_size": 256,
                  "warmup_epochs": 2, "threads": 1},
    "gate": {"max_collision_rate": 0.5},
    "prune": {"max_collision_rate": 0.5},
    "generator": {"epochs": 1, "d_model": 32, "n_heads": 2, "n_layers": 1, "batch_size": 128, "valid_users": 100,
                  "beam_size": 10, "eval_every": 1, "warmup_steps": 10, "max_train_minutes": 1.0, "threads": 1},
    "orchestration": {"dask_workers": 2, "partition_rows": 250},
})
STAGES = {"catalog", "embed", "tokenizer", "sids", "publish"}


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return shop(n_items=1100, seed=2)[0]


def _write(table: pa.Table, folder: Path, name: str) -> str:
    """A day's catalog file; its stem names the catalog (and so its index registry and MLflow experiment)."""
    folder.mkdir(parents=True, exist_ok=True)
    return str(write_catalog(table, folder / f"{name}.parquet"))


def _first_night(name: str, items: pa.Table, folder: Path) -> dict:
    """The first 400 items published as catalog `name` (artifacts of equal items are reused from the store)."""
    from flows.reindex import reindex

    return reindex(catalog=_write(items.slice(0, 400), folder / "day1", name), config=CONFIG)


def _retitled(table: pa.Table, rows, suffix: str) -> pa.Table:
    titles = np.array(table.column("title").to_pylist(), dtype=object)
    titles[rows] = [f"{t} {suffix}" for t in titles[rows]]
    return table.set_column(table.schema.get_field_index("title"), "title", pa.array(titles, pa.string()))


def _with_id(row: pa.Table, item_id: str) -> pa.Table:
    return row.set_column(0, row.schema.field("item_id"), pa.array([item_id]))


def _runs(run_id: str):
    """The flow's MLflow run and its stage runs by name."""
    from mlflow.tracking import MlflowClient

    from tasks.tracking import Tracker

    client: MlflowClient = Tracker().client
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    return client, parent, {r.info.run_name: r for r in children}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.fixture(scope="module")
def published(prefect_api, items, tmp_path_factory):
    """Catalog "shop" after its first night, the shared expensive setup: it embeds the 400 items and fits the
    tokenizer, which other tests' first nights (under their own catalog names) then reuse from the store."""
    return _first_night("shop", items, tmp_path_factory.mktemp("shop"))


def test_reindex_publishes_a_gated_index_with_artifacts_and_lineage(published):
    index = Path(published["index_path"])
    assert registry("shop").current() == published["index_version"] == index.name
    for name in ("sids.parquet", "codes.parquet", "trie.npz", "report.json", "gates.json", "tokenizer", "manifest.json"):
        assert (index / name).exists(), name
    manifest = json.loads((index / "manifest.json").read_text())
    sids = read_sids(index / "sids.parquet")
    assert len(sids) == manifest["n_items"] == 400
    assert len(np.unique(sids.token_matrix(), axis=0)) == 400  # every SID names one item
    assert manifest["refit"] is True and manifest["prefect_flow_run_id"]

    client, parent, stages = _runs(published["mlflow_run_id"])
    assert set(stages) == STAGES and parent.info.status == "FINISHED"
    assert parent.data.params["quantizer.codebook_size"] == "64"  # the whole config as params
    tags = parent.data.tags
    assert tags["prefect.flow_run_id"] == manifest["prefect_flow_run_id"]
    for kind, version in (("catalog", manifest["versions"]["catalog"]), ("embedding", manifest["versions"]["embeddings"]),
                          ("tokenizer", manifest["versions"]["tokenizer"]), ("index", index.name)):
        assert tags[f"rqsid.lineage.{kind}"] == version
    assert stages["sids"].data.tags["rqsid.lineage.tokenizer"] == manifest["versions"]["tokenizer"]
    assert stages["sids"].data.metrics["k"] == manifest["k"]
    assert "sids.l2.gini" in stages["sids"].data.metrics
    embedded = _artifacts(client, stages["embed"].info.run_id)
    # the embeddings file is logged by the run that embedded them (tests earlier in the session may have)
    assert "gx/embeddings.json" in embedded
    assert ("embeddings/embeddings.parquet" in embedded) == (stages["embed"].data.metrics["reused"] == 0.0)
    fitted_here = stages["tokenizer"].data.metrics["reused"] == 0.0
    assert any(p.startswith("rqvae/model/") for p in _artifacts(client, stages["tokenizer"].info.run_id)) == fitted_here
    assert {"reports/sids.json", "reports/before_pruning.json", "gx/distribution.json", "plots/pruning_before_after.png"} <= \
        _artifacts(client, stages["sids"].info.run_id)
    assert "plots/trend_balance.png" in _artifacts(client, parent.info.run_id)
    assert {"gx/catalog.json"} <= _artifacts(client, stages["catalog"].info.run_id)
    assert {"index/sids.parquet", "index/manifest.json"} <= _artifacts(client, stages["publish"].info.run_id)

    from prefect import get_client

    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(manifest["prefect_flow_run_id"])
        assert prefect.read_flow(run.flow_id).name == "reindex" and run.state.is_completed()


def test_a_rerun_reuses_what_is_on_disk(published, items, tmp_path):
    from flows.reindex import reindex

    manifest = json.loads((Path(published["index_path"]) / "manifest.json").read_text())
    embeddings = store().path("embeddings", manifest["versions"]["embeddings"])
    written = (embeddings / "embeddings.parquet").stat().st_mtime_ns
    again = reindex(catalog=_write(items.slice(0, 400), tmp_path, "shop"), config=CONFIG)
    assert again["index_version"] == published["index_version"] and again["reused"] and not again["refit"]
    assert (embeddings / "embeddings.parquet").stat().st_mtime_ns == written
    _, _, stages = _runs(again["mlflow_run_id"])
    assert stages["embed"].data.metrics["n_embedded"] == 0
    assert stages["tokenizer"].data.metrics["refit"] == 0.0
    assert "sids" not in stages  # nothing to rebuild


def test_next_night_keeps_the_sids_of_unchanged_items(published, items, tmp_path):
    from flows.reindex import reindex

    first = _first_night("shop-night2", items, tmp_path)
    previous = read_sids(Path(first["index_path"]) / "sids.parquet")
    today = pa.concat_tables([_retitled(items.slice(0, 400), np.arange(5), "(2026 model)"), items.slice(400, 20)])
    result = reindex(catalog=_write(today, tmp_path / "day2", "shop-night2"), config=CONFIG)
    assert not result["refit"] and not result["drift"]["drifted"]
    assert (result["drift"]["n_new"], result["drift"]["n_changed"]) == (20, 5)
    _, _, stages = _runs(result["mlflow_run_id"])
    assert stages["embed"].data.metrics["n_embedded"] == 25  # only new and changed items
    current = read_sids(Path(result["index_path"]) / "sids.parquet")
    unchanged = np.arange(5, 400)
    rows = current.row_of(previous.item_ids[unchanged])
    prev_tokens, tokens = previous.token_matrix()[unchanged], current.token_matrix()[rows]
    width = max(prev_tokens.shape[1], tokens.shape[1])
    pad = lambda m: np.pad(m, ((0, 0), (0, width - m.shape[1])), constant_values=-1)  # noqa: E731
    same = (pad(prev_tokens) == pad(tokens)).all(axis=1)
    assert same.all()  # a new item joining an old item's path takes the dedup token, the old SID stays
    changes = result["sid_changes"]
    assert changes["items_in_both"] == 400 and changes["sids_changed"] == 400 - changes["sids_kept"] <= 5 + (~same).sum()
    assert registry("shop-night2").current() == result["index_version"]


def test_a_gate_that_cannot_pass_publishes_nothing(published, items, tmp_path):
    from flows.reindex import reindex

    _first_night("shop-gate", items, tmp_path)
    reg = registry("shop-gate")
    current, versions = reg.current(), reg.versions()
    # an item with another's exact text gets the same codes: collisions that no pruning can remove
    twin = _with_id(items.slice(7, 1), "twin-of-7")
    # and two bad rows for the quarantine: a repeated id and an empty one
    bad = pa.concat_tables([items.slice(3, 1), _with_id(items.slice(9, 1), "")])
    catalog = _write(pa.concat_tables([items.slice(0, 400), items.slice(500, 20), twin, bad]), tmp_path / "a", "shop-gate")
    impossible = CONFIG.model_copy(update={"gate": CONFIG.gate.model_copy(update={"max_collision_rate": 0.0})})
    with pytest.raises(GateFailed, match="distribution gate still fails after pruning.*nothing was published"):
        reindex(catalog=catalog, config=impossible)
    assert reg.current() == current and reg.versions() == versions
    assert not any(p.name.startswith(".") for p in (reg.root / "versions").iterdir())  # no half-written folder

    from tasks.tracking import Tracker

    client = Tracker().client
    failed = client.search_runs([client.get_experiment_by_name("shop-gate").experiment_id],
                                "attributes.run_name = 'sids' and attributes.status = 'FAILED'")
    assert failed and "gx/distribution.json" in _artifacts(client, failed[0].info.run_id)
    # resuming after the failure: the stored embeddings are reused, only the gate decision is redone
    result = reindex(catalog=catalog, config=CONFIG)
    client, _, stages = _runs(result["mlflow_run_id"])
    assert stages["embed"].data.metrics["n_embedded"] == 0 and reg.current() == result["index_version"]
    # the bad rows were quarantined, counted, and kept beside the run; the GX suite saw them on the raw rows
    assert stages["catalog"].data.metrics["n_quarantined"] == 2
    assert stages["catalog"].data.metrics["catalog_gate_raw_success"] == 0.0
    assert {"quarantine/quarantine.parquet", "gx/catalog.json"} <= _artifacts(client, stages["catalog"].info.run_id)
    assert json.loads((Path(result["index_path"]) / "manifest.json").read_text())["n_items"] == 421


def test_drift_starts_a_run_of_the_retrain_deployment(prefect_api, published, items, tmp_path):
    from deployments.nightly import retrain_deployment
    from flows.drift_watch import drift_watch
    from prefect_runs import runs_for

    deployment_id = retrain_deployment(CONFIG).apply()
    grown = pa.concat_tables([items.slice(0, 420), items.slice(1000, 60)])  # 60 of 480 items are new
    result = drift_watch(catalog=_write(grown, tmp_path, "shop"), config=CONFIG)
    assert result["drifted"] and result["exceeded"][0].startswith("new_share") and result["event_id"]
    assert registry("shop").current() == published["index_version"]  # watching publishes nothing
    (run,) = runs_for(deployment_id, "shop")
    assert run.parameters["catalog"].endswith("shop.parquet") and run.state.is_scheduled()
    assert RqsidConfig.model_validate(run.parameters["config"]) == CONFIG  # the deployment's config, as JSON


def test_nightly_chain_trains_and_promotes_only_a_generator_that_wins_the_contest(prefect_api):
    from flows.nightly import nightly
    from flows.retrain import model_name, retrain
    from rqsid.catalog import read_interactions
    from rqsid.generator.cases import validation_cases
    from tasks.generator import interactions_of
    from tasks.tracking import Tracker

    first = nightly(catalog=None, config=CONFIG, demo_items=300)
    assert first["drift"]["index_version"] is None and first["reindex"]["refit"]
    model = first["retrain"]
    assert model["promoted"] and model["model_version"] == 1
    assert 0 <= model["metrics"]["valid"]["all"]["recall@10"] <= 1
    tracker = Tracker()
    assert int(tracker.client.get_model_version_by_alias(model_name("demo"), "champion").version) == 1

    _, parent, stages = _runs(model["mlflow_run_id"])
    assert set(stages) == {"train", "contest", "register"}
    assert parent.data.tags["rqsid.lineage.index"] == first["reindex"]["index_version"]
    assert parent.data.tags["rqsid.lineage.generator"] == model["generator_version"]

    # the same inputs again: the stored generator is reused, not registered twice, and nothing is contested
    again = retrain(catalog_name="demo", config=CONFIG)
    assert again["reused"] and again["model_version"] == 1 and again["contest"]["result"] is None

    # another config: a new version, champion only if it wins the paired contest on today's validation users
    narrower = CONFIG.model_copy(update={"generator": CONFIG.generator.model_copy(update={"d_model": 16})})
    other = retrain(catalog_name="demo", config=narrower)
    assert other["model_version"] == 2
    contest = other["contest"]["result"]
    beyond_noise = contest["mean_diff"] > contest["z"] * contest["se"] and contest["mean_diff"] > 0
    assert other["promoted"] == contest["promoted"] == beyond_noise
    champion = tracker.client.get_model_version_by_alias(model_name("demo"), "champion")
    assert int(champion.version) == (2 if other["promoted"] else 1)
    # both were evaluated on the same cases: today's validation users, each model with its own index
    index_dir = registry("demo").path(first["reindex"]["index_version"])
    today = validation_cases(read_interactions(interactions_of(index_dir)), CONFIG.serving.contest_users, CONFIG.generator.seed)
    assert other["contest"]["cases"] == contest["cases"] == today.fingerprint()
    assert contest["n"] == contest["champion"]["n"] == contest["challenger"]["n"] == len(today)
    _, _, stages = _runs(other["mlflow_run_id"])
    logged = stages["contest"].data.metrics
    assert logged["contest.champion.n"] == logged["contest.challenger.n"] == len(today)
    assert logged["contest.champion.recall_at_10"] == pytest.approx(contest["champion"]["recall@10"])
    assert logged["contest.challenger.recall_at_10"] == pytest.approx(contest["challenger"]["recall@10"])


def test_retrain_without_a_published_index_is_a_clear_error(prefect_api):
    from flows.retrain import retrain
    from rqsid import RqsidError

    with pytest.raises(RqsidError, match="catalog 'nowhere' has no published index; run `rqsid reindex` first"):
        retrain(catalog_name="nowhere", config=CONFIG)
