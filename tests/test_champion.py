"""The champion through the real flows (session Prefect server, Dask, GX, sqlite MLflow): its contest on the
same validation users, `rqsid recommend`, behaviour drift on a shifted and an unshifted history stream, and
its binding to an index (the stable path serves new items; changed SIDs keep its own index).

The users follow a learnable taste: over 80 "hot" items of the shop, each next item is a fixed function
of the last one. A shifted stream follows another function. Each test works on a catalog of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_flows import CONFIG, _runs, _write

from cli_runner import rqsid
from rqsid.catalog import read_interactions
from rqsid.config import GeneratorConfig
from rqsid.generator.cases import summary, validation_cases
from rqsid.generator.data import SidVocab
from rqsid.index import read_index_sids
from rqsid.schema import INTERACTIONS_SCHEMA
from synthetic_tables import shop
from tasks.common import registry

HOT = 80
# Learns the taste in a few seconds on one thread; item vectors include the items' text (features from the
# index); one Dask worker embeds the few new items (a runtime setting: the embeddings stay those of CONFIG)
LEARN = CONFIG.model_copy(update={"orchestration": CONFIG.orchestration.model_copy(update={"dask_workers": 1}),
                                  "generator": GeneratorConfig(
    d_model=32, n_heads=2, n_layers=1, max_history=8, dropout=0.0, epochs=12, batch_size=64, lr=3e-3, warmup_steps=5,
    eval_every=3, valid_users=0, patience=5, beam_size=10, max_train_minutes=2.0, seed=7, threads=1, item_text=True)})
# A challenger that cannot beat a trained champion: one epoch at a negligible learning rate
WEAK = LEARN.model_copy(update={"generator": LEARN.generator.model_copy(update={"epochs": 1, "lr": 1e-6, "eval_every": 1})})


def taste(item: int) -> int:
    return (item * 37 + 11) % HOT


def shifted(item: int) -> int:
    return (item * 13 + 5) % HOT


def stream(ids: np.ndarray, users: int = 300, seed: int = 0) -> list[list[int]]:
    """Each user's hot-item indexes, 6-9 of them, following `taste` from a random start."""
    rng = np.random.default_rng(seed)
    chains = []
    for _ in range(users):
        chain = [int(rng.integers(HOT))]
        for _ in range(int(rng.integers(6, 10)) - 1):
            chain.append(taste(chain[-1]))
        chains.append(chain)
    return chains


def interactions_file(ids: np.ndarray, chains: list[list[int]], path: Path) -> str:
    users = [f"u{u}" for u, c in enumerate(chains) for _ in c]
    seq = [s for c in chains for s in range(len(c))]
    n = len(users)
    table = pa.table({"user_id": users, "item_id": [str(ids[i]) for c in chains for i in c], "seq": pa.array(seq, pa.int32()),
                      "timestamp": pa.nulls(n, pa.int64()), "query": pa.nulls(n, pa.string())}, schema=INTERACTIONS_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def continued(chains: list[list[int]], step, more: int = 3) -> list[list[int]]:
    """Every user's next `more` items after the day-one history, following `step`."""
    out = []
    for chain in chains:
        chain = list(chain)
        for _ in range(more):
            chain.append(step(chain[-1]))
        out.append(chain)
    return out


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return shop(n_items=1100, seed=2)[0]


def first_night(name: str, items: pa.Table, folder: Path) -> dict:
    """Catalog `name` (the shop's first 400 items) indexed with day one's interactions, and its first
    generator trained, contested (nobody to beat) and promoted."""
    from flows.reindex import reindex
    from flows.retrain import retrain

    catalog = items.slice(0, 400)
    ids = np.asarray(catalog.column("item_id").to_pylist(), dtype=object)
    chains = stream(ids)
    day1 = interactions_file(ids, chains, folder / "day1" / "interactions.parquet")
    index = reindex(catalog=_write(catalog, folder / "day1", name), interactions=day1, config=LEARN)
    model = retrain(catalog_name=name, config=LEARN)
    return {"ids": ids, "chains": chains, "day1": day1, "index": index, "model": model, "folder": folder}


@pytest.fixture(scope="module")
def champ(prefect_api, items, tmp_path_factory):
    return first_night("champ", items, tmp_path_factory.mktemp("champ"))


def test_the_first_champion_is_bound_to_its_index_and_its_contest_cases_are_todays(champ):
    from tasks.serving import evaluate, load_registered

    model = champ["model"]
    assert model["promoted"] and model["champion"] == model["model_version"]
    bundle = load_registered("models:/champ-generator@champion")
    index = champ["index"]["index_version"]
    assert bundle.index_version == bundle.trained_index_version == index
    trained_on = SidVocab.from_sid_table(read_index_sids(registry("champ").path(index)))
    assert bundle.trained.vocab.fingerprint() == trained_on.fingerprint()
    assert bundle.trained.cfg.item_text and bundle.trained.model.item_text.shape == (400, 384)  # text features inside
    # the contest's cases are today's validation users, as the rule defines them
    today = validation_cases(read_interactions(champ["day1"]), LEARN.serving.contest_users, LEARN.generator.seed)
    assert model["contest"]["cases"] == today.fingerprint()
    client, _, stages = _runs(model["mlflow_run_id"])
    assert set(stages) == {"train", "contest", "register"}
    contest = stages["contest"].data.metrics
    assert contest["contest.challenger.n"] == len(today) == 300
    assert contest["contest.challenger.recall_at_10"] > 0.5  # the taste was learned
    version = client.get_model_version("champ-generator", str(model["model_version"]))
    assert version.tags["rqsid.index_version"] == index
    assert float(version.tags["rqsid.registration.recall_at_10"]) == pytest.approx(contest["contest.challenger.recall_at_10"])
    # the served model was refitted on train + validation (the default); the contest judged the model chosen before
    # the refit, which the registered bundle carries beside it
    assert bundle.trained.stats["refit"]["done"] and bundle.trained.selected_model is not None
    judged = summary(evaluate(bundle.selection(), today))
    assert judged["recall@10"] == pytest.approx(contest["contest.challenger.recall_at_10"])


def test_rqsid_recommend_prints_the_champions_items_with_titles(champ, items, tmp_path):
    ids = champ["ids"]
    titles = dict(zip(items.column("item_id").to_pylist(), items.column("title").to_pylist(), strict=True))
    history = [str(ids[3]), str(ids[taste(3)])]
    out = rqsid("recommend", "--catalog", "champ", "--history", *history, "nope", "--k", "10").stdout
    lines = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(lines) == 10 and "1 unknown to the index" in out
    first = lines[0].split()
    assert first[1] == str(ids[taste(taste(3))])  # the learned taste's next item comes first
    assert titles[first[1]][:40] in lines[0]
    answer = json.loads(rqsid("recommend", "--catalog", "champ", "--history", *history, "--json").stdout)
    assert answer["item_ids"][0] == first[1] and answer["titles"][0] == titles[first[1]]
    batch = tmp_path / "users.jsonl"
    batch.write_text("".join(json.dumps({"user_id": f"x{k}", "history": [str(ids[k])]}) + "\n" for k in range(5)))
    rqsid("recommend", "--catalog", "champ", "--input", batch, "--k", "3")
    rows = [json.loads(line) for line in (tmp_path / "users.recommendations.jsonl").read_text().splitlines()]
    assert [r["user_id"] for r in rows] == [f"x{k}" for k in range(5)] and all(len(r["item_ids"]) == 3 for r in rows)
    assert rows[0]["item_ids"][0] == str(ids[taste(0)])
    missing = rqsid("recommend", "--catalog", "no-such-catalog", "--history", "1", ok=False)
    assert missing.returncode == 2 and "no-such-catalog-generator@champion" in missing.stderr


def test_behaviour_drift_fires_on_a_shifted_taste_and_not_on_the_same_one(champ, tmp_path):
    from deployments.nightly import retrain_deployment
    from flows.drift_watch import drift_watch
    from prefect_runs import event_payload, runs_for

    deployment_id = retrain_deployment(LEARN).apply()
    catalog = str(Path(champ["folder"]) / "day1" / "champ.parquet")
    same = interactions_file(champ["ids"], continued(champ["chains"], taste), tmp_path / "same.parquet")
    calm = drift_watch(catalog=catalog, interactions=same, config=LEARN)
    behaviour = calm["behaviour"]
    assert behaviour["n_cases"] == 900 and not behaviour["drifted"] and calm["event_id"] is None
    assert behaviour["recall_at_10"] >= behaviour["threshold"]
    assert runs_for(deployment_id, "champ", timeout_s=0) == []

    moved = interactions_file(champ["ids"], continued(champ["chains"], shifted), tmp_path / "shifted.parquet")
    fired = drift_watch(catalog=catalog, interactions=moved, config=LEARN)
    behaviour = fired["behaviour"]
    assert behaviour["drifted"] and behaviour["recall_at_10"] < behaviour["threshold"]
    assert not fired["drifted"] and fired["event_id"]  # the users drifted, not the catalog
    payload = event_payload(fired["event_id"])
    assert payload["behaviour"]["recall_at_10"] == pytest.approx(behaviour["recall_at_10"])
    assert payload["behaviour"]["registered_recall_at_10"] == pytest.approx(behaviour["registered_recall_at_10"])
    (run,) = runs_for(deployment_id, "champ")
    assert run.parameters["catalog"] == catalog and run.state.is_scheduled()
    _, _, stages = _runs(fired["mlflow_run_id"])
    logged = stages["behaviour"].data.metrics
    assert logged["behaviour.drifted"] == 1.0 and logged["behaviour.recall_at_10"] == pytest.approx(behaviour["recall_at_10"])


def test_the_champion_serves_a_stable_newer_index_and_keeps_its_own_when_sids_change(prefect_api, items, tmp_path):
    from flows.reindex import reindex
    from flows.retrain import retrain
    from tasks.serving import load_registered

    night1 = first_night("champ-stable", items, tmp_path)
    index1 = night1["index"]["index_version"]
    # night 2: twenty new items and nothing else: the published tokenizer is reused and every old SID kept
    grown = pa.concat_tables([items.slice(0, 400), items.slice(400, 20)])
    catalog = _write(grown, tmp_path / "day2", "champ-stable")
    night2 = reindex(catalog=catalog, interactions=night1["day1"], config=LEARN)
    assert not night2["refit"] and night2["sid_changes"]["sids_changed"] == 0
    lost = retrain(catalog_name="champ-stable", config=WEAK)
    assert not lost["promoted"] and lost["contest"]["result"]["n"] == 300
    rebound = lost["champion"]
    assert rebound not in (night1["model"]["model_version"], lost["model_version"])  # the champion, registered again
    bundle = load_registered("models:/champ-stable-generator@champion")
    assert (bundle.index_version, bundle.trained_index_version) == (night2["index_version"], index1)
    new_ids = set(items.slice(400, 20).column("item_id").to_pylist())
    n = len(grown)
    answer = bundle.retriever().recommend([[str(night1["ids"][5])]], k=n, beam_size=n)[0]
    assert new_ids <= set(answer.item_ids)  # recommendable the night they were indexed, before any retrain

    # night 3: a refit tokenizer (another seed) changes the SIDs; the retrained challenger loses again
    other = LEARN.model_copy(update={"quantizer": LEARN.quantizer.model_copy(update={"seed": 1})})
    night3 = reindex(catalog=catalog, interactions=night1["day1"], config=other, refit=True)
    kept = retrain(catalog_name="champ-stable", config=WEAK)
    assert not kept["promoted"] and kept["champion"] == rebound and "keeps index" in kept["contest"]["serving"]
    champion = load_registered("models:/champ-stable-generator@champion")
    current = registry("champ-stable").current_path()
    assert current.name == night3["index_version"] != champion.index_version == night2["index_version"]
    assert champion.trained.vocab.fingerprint() != SidVocab.from_sid_table(read_index_sids(current)).fingerprint()
