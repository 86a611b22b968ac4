"""Cold start: how well the generative retriever recommends items it never saw in training.

Protocol (issue 12): remove 5 % of the items (a seeded random choice) and every interaction with them
from the training data; fit the SIDs on the FULL catalog's text embeddings (new items get SIDs from
their text, as a nightly re-index gives them); train the generator on what remains; then evaluate on
the cold cases: every user whose last interaction is a removed item (history: everything before it,
target: that item), ranking over all items. Baselines on the same cases:
- content: the items nearest (cosine of text embeddings) to the mean of the last 3 history items,
  history items excluded;
- popularity: the most frequent items of the training interactions (a removed item has no count).
For context, the generator's Recall/NDCG on the ordinary (warm) test split of the training data.

    .venv/bin/python benchmarks/cold_start.py --dataset ../shared/data/amazon-beauty-2014 \\
        --embeddings beauty.parquet --minutes 20
    .venv/bin/python benchmarks/cold_start.py --dataset ... --embeddings ... --minutes 1 --tag _quick \\
        --set generator.item_text=true
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from common import RESULTS, header, log, md_table, new_result, write_result

from rqsid.catalog import validate_catalog, validate_interactions
from rqsid.config import load_config, parse_override
from rqsid.embed import read_embeddings
from rqsid.generator.cases import Cases, summary
from rqsid.generator.data import SidVocab, item_counts_before, sequences_from_interactions
from rqsid.generator.retriever import Retriever
from rqsid.generator.train import evaluate_split, train_generator
from rqsid.lookup import align_embeddings
from rqsid.prune import auto_prune
from rqsid.quantize import make_tokenizer
from rqsid.quantize.base import torch_threads
from rqsid.sids import assign_sids
from rqsid.sources import read_source

K = 10
CONTENT_LAST = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="a Beauty/Scientific folder or a folder with catalog.* + interactions.*")
    p.add_argument("--embeddings", required=True, type=Path, help="item text embeddings parquet (rqsid embed)")
    p.add_argument("--minutes", type=float, default=20.0, help="generator training budget (generator.max_train_minutes)")
    p.add_argument("--holdout", type=float, default=0.05, help="share of items removed from training")
    p.add_argument("--seed", type=int, default=0, help="seed of the removed items")
    p.add_argument("--warm-users", type=int, default=5000, help="users of the warm test split evaluated (0 = all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. generator.item_text=true")
    p.add_argument("--tag", default="", help="suffix of the result files (cold_start{tag}.json/.md)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    return p.parse_args(argv)


def removed_items(item_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    n = max(1, round(share * len(item_ids)))
    return np.sort(np.random.default_rng(seed).choice(np.asarray(item_ids, dtype=object), n, replace=False))


def without(interactions: pa.Table, removed: np.ndarray) -> pa.Table:
    """The interactions with every row naming a removed item dropped (seq keeps each user's order)."""
    gone = pa.array(removed.astype(str), type=interactions.column("item_id").type)
    return interactions.filter(pc.invert(pc.is_in(interactions.column("item_id"), gone)))


def cold_cases(interactions: pa.Table, removed: np.ndarray) -> Cases:
    """Users whose last interaction is a removed item, with at least one item before it."""
    frame = interactions.select(["user_id", "item_id", "seq"]).to_pandas().sort_values(["user_id", "seq"], kind="stable")
    users, histories, targets = [], [], []
    gone = set(removed.astype(str))
    for user, group in frame.groupby("user_id", sort=True):
        items = group["item_id"].astype(str).tolist()
        if len(items) >= 2 and items[-1] in gone:
            users.append(user)
            histories.append(np.asarray(items[:-1], dtype=object))
            targets.append(items[-1])
    return Cases(np.asarray(users, dtype=object), histories, np.asarray(targets, dtype=object))


def ranked_metrics(ranked_ids: list[list[str]], cases: Cases) -> dict[str, np.ndarray]:
    rank = np.array([r.index(t) if t in r else K for r, t in zip(ranked_ids, cases.targets, strict=True)])
    out = {}
    for k in (5, 10):
        hit = rank < k
        out[f"recall@{k}"] = hit.astype(float)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return out


def generator_metrics(retriever: Retriever, cases: Cases) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    answers = retriever.recommend([list(h) for h in cases.histories], k=K)
    ranked = [a.item_ids for a in answers]
    return ranked_metrics(ranked, cases), ranked


def content_ranking(cases: Cases, item_ids: np.ndarray, X: np.ndarray) -> list[list[str]]:
    """Nearest items (cosine) to the mean of each history's last CONTENT_LAST items; history items excluded."""
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    rows = {str(i): r for r, i in enumerate(item_ids)}
    out = []
    for history in cases.histories:
        known = [rows[str(i)] for i in history if str(i) in rows]
        query = unit[known[-CONTENT_LAST:]].mean(axis=0)
        scores = unit @ query
        scores[known] = -np.inf
        top = np.argpartition(-scores, K)[:K]
        out.append([str(item_ids[i]) for i in top[np.argsort(-scores[top], kind="stable")]])
    return out


def run(catalog: pa.Table, interactions: pa.Table, item_ids: np.ndarray, X: np.ndarray, config, holdout: float, seed: int,
        warm_users: int = 5000) -> dict[str, Any]:
    started = time.perf_counter()
    ids = np.asarray(catalog.column("item_id").to_pylist(), dtype=object)
    X = align_embeddings(ids, item_ids, X, "embeddings")
    removed = removed_items(ids, holdout, seed)
    train_inter = without(interactions, removed)
    log(f"{len(removed)} of {len(ids)} items removed; {interactions.num_rows - train_inter.num_rows} of "
        f"{interactions.num_rows} interactions dropped from training")

    t0 = time.perf_counter()
    tokenizer = make_tokenizer(config.quantizer).fit(X)
    table = auto_prune(assign_sids(ids, tokenizer.encode(X), tokenizer.codebook_sizes), config.prune).table
    sid_seconds = time.perf_counter() - t0
    vocab = SidVocab.from_sid_table(table)
    features = align_embeddings(vocab.item_ids, ids, X, "embeddings") if config.generator.item_text else None
    seqs = sequences_from_interactions(train_inter, vocab)
    log(f"SIDs on all items in {sid_seconds:.0f} s; training on {seqs.n_users} users, "
        f"at most {config.generator.max_train_minutes} min")
    trained = train_generator(seqs, vocab, config.generator, progress=sys.stderr.isatty(), item_features=features)

    cases = cold_cases(interactions, removed)
    log(f"{len(cases)} cold cases (users whose last item was removed)")
    retriever = Retriever(trained)
    gen_case, gen_ranked = generator_metrics(retriever, cases)
    counts = item_counts_before(seqs, vocab.n_items, "test")
    popular = [str(i) for i in vocab.item_ids[np.argsort(-counts, kind="stable")[:K]]]
    gone = set(removed.astype(str))
    results = {
        "generator": summary(gen_case),
        "content (text embeddings)": summary(ranked_metrics(content_ranking(cases, ids, X), cases)),
        "popularity": summary(ranked_metrics([popular] * len(cases), cases)),
    }
    users = np.arange(seqs.n_users)
    if 0 < warm_users < seqs.n_users:
        users = np.sort(np.random.default_rng(seed).choice(seqs.n_users, warm_users, replace=False))
    warm, _ = evaluate_split(trained, seqs, "test", users=users)
    return {
        "items": len(ids), "removed_items": len(removed), "interactions": interactions.num_rows,
        "train_interactions": train_inter.num_rows, "train_users": seqs.n_users, "cold_cases": len(cases),
        "sid_seconds": round(sid_seconds, 1), "train": trained.stats, "best": trained.best,
        "cold": results,
        "generator_new_item_slots": float(np.mean([sum(i in gone for i in r) for r in gen_ranked])) if gen_ranked else 0.0,
        "warm_test": warm["all"],
        "config": config.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> str:
    r = result["run"]
    rows = [{"method": name, **m} for name, m in r["cold"].items()]
    lines = header("Cold start: recommending items that were never trained on", result, [
        f"{r['removed_items']} of {r['items']} items removed (seed {result['seed']}) with their "
        f"{r['interactions'] - r['train_interactions']} interactions; SIDs fitted on all items' text "
        f"({r['sid_seconds']} s); generator trained {r['train']['train_seconds']} s "
        f"(best validation epoch {r['best'].get('epoch')}), generator.item_text={r['config']['generator']['item_text']}.",
        f"Cold cases: {r['cold_cases']} users whose last item is a removed one; ranking over all items.",
    ])
    lines += md_table(rows, [("method", "method", ""), ("cases", "n", "d"), ("Recall@10", "recall@10", ".4f"),
                             ("NDCG@10", "ndcg@10", ".4f"), ("Recall@5", "recall@5", ".4f"), ("NDCG@5", "ndcg@5", ".4f")])
    warm = r["warm_test"]
    lines += ["", f"The generator puts {r['generator_new_item_slots']:.2f} removed (new) items in an average top-10. "
              f"For context, on the warm test split ({warm['n']} users) it scores Recall@10 {warm['recall@10']:.4f}, "
              f"NDCG@10 {warm['ndcg@10']:.4f}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(overrides=dict(parse_override(text) for text in args.set)
                         | {"generator.max_train_minutes": args.minutes, "generator.threads": args.threads})
    catalog, interactions = read_source(args.dataset)
    if interactions is None:
        raise SystemExit(f"{args.dataset} has no interactions")
    catalog = validate_catalog(catalog)[0]
    interactions = validate_interactions(interactions, catalog.column("item_id").to_numpy(zero_copy_only=False))[0]
    item_ids, X = read_embeddings(args.embeddings)
    with torch_threads(args.threads):
        outcome = run(catalog, interactions, item_ids, X, config, args.holdout, args.seed, args.warm_users)
    result = new_result(dataset=str(args.dataset), seed=args.seed, holdout=args.holdout, run=outcome)
    write_result(f"cold_start{args.tag}", result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
