"""Cases in item ids, the paired champion/challenger rule, and the behaviour-drift judgement."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_generator_train import CFG, synthetic

from rqsid import RqsidError
from rqsid.config import DriftConfig
from rqsid.drift import behaviour_report
from rqsid.generator.cases import Cases, cases_after, last_seq_per_user, per_case_metrics, summary, validation_cases
from rqsid.generator.contest import paired_contest
from rqsid.generator.data import SidVocab, sequences_from_interactions
from rqsid.generator.retriever import Retriever
from rqsid.generator.train import evaluate_split, train_generator
from rqsid.quantize.base import torch_threads
from rqsid.schema import INTERACTIONS_SCHEMA


def interactions(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, seq = zip(*rows, strict=True)
    n = len(rows)
    return pa.table({"user_id": list(users), "item_id": list(items), "seq": pa.array(seq, pa.int32()),
                     "timestamp": pa.nulls(n, pa.int64()), "query": pa.nulls(n, pa.string())}, schema=INTERACTIONS_SCHEMA)


@pytest.fixture(scope="module")
def trained():
    table, inter, _ = synthetic()
    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(inter, vocab)
    with torch_threads(1):
        return inter, seqs, train_generator(seqs, vocab, CFG, progress=False, log=lambda _: None)


def test_validation_cases_in_item_ids_score_exactly_like_the_generators_own_validation(trained):
    inter, seqs, model = trained
    cases = validation_cases(inter)
    assert len(cases) == seqs.n_users
    with torch_threads(1):
        ours = summary(per_case_metrics(Retriever(model), cases))
        theirs = evaluate_split(model, seqs, "valid")[0]["all"]
    assert ours["n"] == theirs["n"]
    for name in ("recall@10", "ndcg@10"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-9)
    assert ours["recall@10"] > 0.5  # the pattern was learned: the comparison is not between two zeros


def test_validation_cases_are_the_second_to_last_items_and_a_seeded_sample_is_stable():
    table = interactions([("a", "i1", 0), ("a", "i2", 1), ("a", "i3", 2), ("a", "i4", 3), ("b", "i9", 1), ("b", "i8", 0),
                          ("b", "i7", 2), ("c", "i1", 0), ("c", "i2", 1)])
    cases = validation_cases(table)
    assert list(cases.user_ids) == ["a", "b"] and list(cases.targets) == ["i3", "i9"]  # b's order is by seq
    assert [list(h) for h in cases.histories] == [["i1", "i2"], ["i8"]]
    sample = validation_cases(table, max_users=1, seed=3)
    assert len(sample) == 1 and sample.fingerprint() == validation_cases(table, max_users=1, seed=3).fingerprint()
    assert validation_cases(table).fingerprint() != validation_cases(table.slice(0, 6)).fingerprint()  # b loses its third item


def test_cases_after_the_cutoff_take_each_newer_interaction_with_its_whole_history():
    trained_on = interactions([("a", "i1", 0), ("a", "i2", 1), ("b", "i5", 0)])
    today = interactions([("a", "i1", 0), ("a", "i2", 1), ("a", "i3", 2), ("a", "i4", 3), ("b", "i5", 0),
                          ("c", "i6", 0), ("c", "i7", 1)])
    cases = cases_after(today, last_seq_per_user(trained_on))
    assert list(zip(cases.user_ids, cases.targets, strict=True)) == [("a", "i3"), ("a", "i4"), ("c", "i7")]
    # c is new to the model: its first item has no history, its second is a case
    assert [list(h) for h in cases.histories] == [["i1", "i2"], ["i1", "i2", "i3"], ["i6"]]
    assert len(cases_after(trained_on, last_seq_per_user(trained_on))) == 0


def test_unknown_targets_and_histories_are_misses_not_errors(trained):
    _, _, model = trained
    cases = Cases(np.array(["x", "y"], dtype=object), [np.array(["it1"]), np.array(["nope"])], np.array(["not-an-item", "it3"]))
    metrics = per_case_metrics(Retriever(model), cases)
    assert metrics["recall@10"].tolist() == [0.0, 0.0]


def _cases(n: int) -> Cases:
    return Cases(np.arange(n).astype(str).astype(object), [np.array(["i"])] * n, np.array(["t"] * n, dtype=object))


def test_the_challenger_wins_only_beyond_noise():
    rng = np.random.default_rng(0)
    champion = {"recall@10": (rng.random(2000) < 0.10).astype(float)}
    same = paired_contest(_cases(2000), champion, {"recall@10": champion["recall@10"].copy()})
    assert not same.promoted and same.mean_diff == 0
    # 20 users gained a hit, 16 lost one: a gain within noise keeps the champion
    noisy = champion["recall@10"].copy()
    noisy[np.flatnonzero(noisy == 0)[:20]] = 1.0
    noisy[np.flatnonzero(champion["recall@10"] == 1)[:16]] = 0.0
    close = paired_contest(_cases(2000), champion, {"recall@10": noisy})
    assert not close.promoted and close.mean_diff < 2 * close.se
    better = np.maximum(champion["recall@10"], (rng.random(2000) < 0.05).astype(float))
    clear = paired_contest(_cases(2000), champion, {"recall@10": better})
    assert clear.promoted and clear.mean_diff > 2 * clear.se > 0
    assert clear.challenger["recall@10"] > clear.champion["recall@10"] and clear.n == 2000
    assert "standard error" in clear.rule


def test_a_contest_over_different_cases_is_refused():
    values = {"recall@10": np.zeros(10)}
    with pytest.raises(RqsidError, match="same cases"):
        paired_contest(_cases(10), values, {"recall@10": np.zeros(9)})


def test_behaviour_drift_fires_below_the_margin_and_waits_for_enough_cases():
    config = DriftConfig(max_recall_drop=0.25, min_behaviour_cases=50)
    assert behaviour_report({"recall@10": 0.5, "ndcg@10": 0.3, "n": 400}, 0.6, config).drifted is False  # 0.5 >= 0.45
    fired = behaviour_report({"recall@10": 0.4, "ndcg@10": 0.3, "n": 400}, 0.6, config)
    assert fired.drifted and fired.threshold == pytest.approx(0.45) and "recall_at_10 0.4000 < 0.4500" in fired.exceeded[0]
    few = behaviour_report({"recall@10": 0.0, "ndcg@10": 0.0, "n": 10}, 0.6, config)
    assert not few.drifted and "not judged" in few.note
    assert not behaviour_report({"recall@10": 0.0, "n": 400}, None, config).drifted
