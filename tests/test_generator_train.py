"""End to end: the generator learns a learnable pattern, is deterministic, saves/loads, runs from the CLI."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import cli.generator as cli
from rqsid import RqsidError
from rqsid.config import GeneratorConfig
from rqsid.generator.data import SidVocab, sequences_from_interactions
from rqsid.generator.train import (
    evaluate_split,
    load_generator,
    refit_fits,
    save_generator,
    selection_out_of_time,
    train_generator,
)
from rqsid.quantize.base import torch_threads
from rqsid.schema import INTERACTIONS_SCHEMA
from rqsid.sids import assign_sids, write_sids

N_ITEMS = 80


def next_item(item: np.ndarray) -> np.ndarray:
    """The pattern to learn: the next item is a fixed (scrambling) function of the last one."""
    return (item * 37 + 11) % N_ITEMS


def synthetic(n_users: int = 400, seed: int = 0):
    """SIDs with 2 levels of 6 codes (collisions get dedup tokens; 1 in 3 items has layer 2 pruned),
    and users whose histories follow next_item from a random start."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 6, (N_ITEMS, 2))
    unpruned = assign_sids([f"it{k}" for k in range(N_ITEMS)], codes.copy(), [6, 6])  # (assign_sids keeps the array)
    codes[::3, 1] = -1
    table = assign_sids([f"it{k}" for k in range(N_ITEMS)], codes, [6, 6])
    lengths = rng.integers(5, 10, n_users)
    users, items, seq = [], [], []
    for u, n in enumerate(lengths):
        chain = [int(rng.integers(N_ITEMS))]
        for _ in range(n - 1):
            chain.append(int(next_item(np.array(chain[-1]))))
        users += [f"u{u}"] * n
        items += [f"it{k}" for k in chain]
        seq += list(range(n))
    m = len(users)
    inter = pa.table(
        {"user_id": users, "item_id": items, "seq": pa.array(seq, pa.int32()),
         "timestamp": pa.nulls(m, pa.int64()), "query": pa.nulls(m, pa.string())},
        schema=INTERACTIONS_SCHEMA,
    )
    return table, inter, unpruned


CFG = GeneratorConfig(
    d_model=32, n_heads=2, n_layers=1, max_history=8, user_buckets=1, dropout=0.0, epochs=12,
    batch_size=64, lr=3e-3, warmup_steps=5, eval_every=3, valid_users=0, patience=5, beam_size=10,
    max_train_minutes=2.0, seed=7,
).sid_only()  # the SID-scored generator: HYBRID (test_generator_retriever) adds the item-level head


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while this module trains and ranks; torch's setting is process-wide, so it is restored."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    table, inter, _ = synthetic()
    vocab = SidVocab.from_sid_table(table)
    return table, inter, vocab, sequences_from_interactions(inter, vocab)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    _, _, vocab, seqs = data
    out = tmp_path_factory.mktemp("gen")
    return train_generator(seqs, vocab, CFG, out_dir=out, progress=False, log=lambda _: None), out


def test_learns_the_pattern_far_above_chance(data, trained):
    _, _, _, seqs = data
    model, _ = trained
    metrics, ranked = evaluate_split(model, seqs, "test")
    chance = 10 / N_ITEMS
    assert metrics["all"]["recall@10"] > 0.9 > 5 * chance
    assert metrics["all"]["ndcg@10"] > 0.6
    assert model.best["valid"]["recall@10"] > 0.9
    assert model.stats["samples_per_s"] > 0 and model.history[0]["loss"] > model.history[-1]["loss"]


def test_same_seed_same_model_and_rankings(data, trained):
    _, _, vocab, seqs = data
    first, _ = trained
    cfg = CFG.model_copy(update={"epochs": 3})
    epochs = []
    a = train_generator(seqs, vocab, cfg, progress=False, log=lambda _: None, on_epoch=epochs.append)
    b = train_generator(seqs, vocab, cfg, progress=False, log=lambda _: None)
    assert epochs == a.history and [e["epoch"] for e in epochs] == [1, 2, 3]  # each epoch's record, as it was made
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    np.testing.assert_array_equal(evaluate_split(a, seqs, "test")[1], evaluate_split(b, seqs, "test")[1])


def test_save_load_round_trip(data, trained):
    table, _, vocab, seqs = data
    model, out = trained
    loaded = load_generator(out, vocab)
    assert loaded.best == model.best and loaded.cfg == model.cfg
    np.testing.assert_array_equal(evaluate_split(loaded, seqs, "test")[1], evaluate_split(model, seqs, "test")[1])
    other = SidVocab.from_sid_table(assign_sids(list(table.item_ids), np.roll(table.codes, 1, axis=0), table.level_sizes))
    with pytest.raises(RqsidError, match="other SIDs"):
        load_generator(out, other)


def test_cli_train_then_evaluate(data, tmp_path, capsys):
    table, inter, _, _ = data
    sids, interactions, out = tmp_path / "sids.parquet", tmp_path / "inter.parquet", tmp_path / "model"
    unpruned = tmp_path / "unpruned.parquet"
    write_sids(sids, table)
    write_sids(unpruned, synthetic()[2])
    pq.write_table(inter, interactions)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    overrides = [f"generator.{k}={json.dumps(v)}" for k, v in CFG.model_dump().items()]
    args = parser.parse_args(["train", "--interactions", str(interactions), "--sids", str(sids), "--out", str(out),
                              "--unpruned-sids", str(unpruned), "--no-progress", *sum((["--set", o] for o in overrides), []),
                              "--set", "generator.epochs=3", "--set", "generator.refit_on_valid=true"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| generator | all | 400 |" in printed and "| generator | head |" in printed
    assert "refitted on train + validation targets" in printed
    args = parser.parse_args(["evaluate", "--model", str(out), "--interactions", str(interactions), "--sids", str(sids),
                              "--split", "valid", "--no-progress", "--json", str(tmp_path / "m.json")])
    assert args.func(args) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["split"] == "valid" and result["generator"]["all"]["n"] == 400
    assert "head" not in result["generator"]  # pruned SIDs and no --unpruned-sids: no split, said so
    printed = capsys.readouterr().out
    assert "pass --unpruned-sids" in printed and "the model chosen on validation before the refit" in printed
    # the validation figures are the selection model's: the refit has trained on those targets
    vocab, seqs = SidVocab.from_sid_table(table), sequences_from_interactions(inter, SidVocab.from_sid_table(table))
    selected, _ = evaluate_split(load_generator(out, vocab).selection(), seqs, "valid")
    assert result["generator"]["all"]["recall@10"] == pytest.approx(selected["all"]["recall@10"])


NEWCOMER = N_ITEMS - 1  # it79: an item that only ever occurs as the validation and test target


def test_refit_learns_from_the_validation_targets(tmp_path):
    """Training sequences follow next_item and never reach NEWCOMER; every user's last two items (the
    validation and the test target) are NEWCOMER. Only a model that also trains on the validation
    targets (the refit) can have learnt that users go there."""
    table, _, _ = synthetic()
    rng = np.random.default_rng(3)
    users, items, seq = [], [], []
    for u in range(400):
        chain = [int(rng.integers(N_ITEMS - 1))]
        while len(chain) < int(rng.integers(4, 8)) and next_item(np.array(chain[-1])) != NEWCOMER:
            chain.append(int(next_item(np.array(chain[-1]))))
        chain += [NEWCOMER, NEWCOMER]
        users += [f"u{u}"] * len(chain)
        items += [f"it{k}" for k in chain]
        seq += list(range(len(chain)))
    m = len(users)
    inter = pa.table({"user_id": users, "item_id": items, "seq": pa.array(seq, pa.int32()), "timestamp": pa.nulls(m, pa.int64()),
                      "query": pa.nulls(m, pa.string())}, schema=INTERACTIONS_SCHEMA)
    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(inter, vocab)
    cfg = CFG.model_copy(update={"epochs": 9, "patience": 10, "max_train_minutes": 60.0})
    plain = train_generator(seqs, vocab, cfg, progress=False, log=lambda _: None)
    refit = train_generator(seqs, vocab, cfg.model_copy(update={"refit_on_valid": True}), progress=False, log=lambda _: None)
    assert refit.stats["refit"] == {"done": True, "epochs": refit.best["epoch"]} and "refit" not in plain.stats
    assert refit.best == plain.best  # the same selection run; its validation figures are kept
    first = {name: np.mean(evaluate_split(t, seqs, "test")[1][:, 0] == vocab.rows_of(["it79"])[0])
             for name, t in (("plain", plain), ("refit", refit))}
    assert first["plain"] < 0.3 < 0.9 < first["refit"], first  # NEWCOMER ranked first for the test
    # saved and loaded, the refit keeps the model it was chosen by beside it
    save_generator(tmp_path / "refit", refit)
    loaded = load_generator(tmp_path / "refit", vocab)
    for served, kept in ((loaded.model, refit.model), (loaded.selection().model, refit.selected_model)):
        assert all(torch.equal(a, b) for a, b in zip(served.state_dict().values(), kept.state_dict().values(), strict=True))
    assert loaded.selection().selected_model is None and plain.selection() is plain


def test_selection_keeps_time_for_the_refit():
    """10 s epochs, 3 done: without a refit the run goes on until the deadline; with one it stops once a
    fourth epoch would leave less than the refit of all four needs (4 x 10 s x 1.2 = 48 s)."""
    now = time.perf_counter()
    assert not selection_out_of_time(now + 100, 3, 30.0, refit=False)
    assert selection_out_of_time(now - 1, 3, 30.0, refit=False)
    assert not selection_out_of_time(now + 100, 3, 30.0, refit=True)  # 10 + 48 s of 100 s
    assert selection_out_of_time(now + 55, 3, 30.0, refit=True)  # 10 + 48 s > 55 s
    assert refit_fits(now + 55, 4, 10.0) and not refit_fits(now + 45, 4, 10.0)
