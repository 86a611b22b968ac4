"""Retrieval quality of the generative retriever against SASRec and popularity, on a dataset of
../shared/data, in one run: the default pipeline's SIDs, then `ours` and `sasrec` for each seed (as
parallel one-thread processes), popularity, and the published TIGER figures where they exist.

    .venv/bin/python benchmarks/generator_quality.py --dataset beauty --embeddings beauty.parquet --seeds 0 1 2 --jobs 2

Protocol (both models): leave-one-out (last item = test target, the one before = validation target),
the last 20 items as history, ranking over ALL items, early stopping on the validation NDCG@10 of
the same 5,000 validation users, a wall-clock budget per training run (`--minutes`). Head/tail rows:
test cases whose target's unpruned layer-2 token is among the most frequent tokens covering half of
the items, defined from the same (our default) SIDs for every row.

Writes benchmarks/results/<dataset>_generator.json and .md: `models[<name>].test.all["recall@10"]` is
the mean over seeds, `models[<name>].seeds` the per-seed results, `models[<name>].stderr` the standard
error of the mean.

One job can also be run alone, e.g. to try an idea on validation (`--job ours:0 --set generator.x=y
--idea NAME`): the result is appended to benchmarks/results/generator_ideas.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import RESULTS, log, machine, new_result, write_result

PUBLISHED = {  # TIGER (Rajput et al., NeurIPS 2023), the same P5 splits
    "beauty": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384},
    "sports": {"recall@5": 0.0264, "ndcg@5": 0.0181, "recall@10": 0.0400, "ndcg@10": 0.0225},
}
FOLDERS = {"beauty": "amazon-beauty-2014", "scientific": "amazon-scientific-2018", "sports": "amazon-sports-2014"}
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
IDEAS = RESULTS / "generator_ideas.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(FOLDERS), required=True)
    p.add_argument("--embeddings", type=Path, help="item embeddings parquet (default: embed the catalog, cached in --work)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--models",
        default="ours,sasrec,popularity",
        help="comma list of ours, sasrec, popularity, and "
        "ours-sid-only (the generator without the item-level score: the previous default)",
    )
    p.add_argument("--jobs", type=int, default=2, help="training runs at once (one torch thread each)")
    p.add_argument("--minutes", type=float, default=90.0, help="training budget per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for ours")
    p.add_argument("--sasrec-set", action="append", default=[], metavar="KEY=VALUE", help="SASRecConfig override")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for SIDs, logs and per-run results (default /work/scratch/quality/<dataset>)",
    )
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--job", help="internal / idea runs: run one training job, e.g. ours:0 or sasrec:1")
    p.add_argument("--idea", help="with --job: record the run in generator_ideas.jsonl under this name")
    return p.parse_args(argv)


# ---------------------------------------------------------------- shared inputs


def prepare(args) -> Path:
    """The default pipeline's SIDs (fitted once, reused by every job) in the work folder."""
    from rqsid.config import load_config
    from rqsid.embed import TextEmbedder, embed_catalog, read_embeddings, write_embeddings
    from rqsid.home import shared_data_dir
    from rqsid.importers import import_dataset
    from rqsid.prune import auto_prune
    from rqsid.quantize import make_tokenizer
    from rqsid.sids import assign_sids, write_sids

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if (work / "sids.parquet").exists():
        log(f"reusing the SIDs in {work}")
        return work
    config = load_config()
    catalog, inter = import_dataset(shared_data_dir() / FOLDERS[args.dataset])
    import pyarrow.parquet as pq

    pq.write_table(inter, work / "interactions.parquet")
    pq.write_table(catalog, work / "catalog.parquet")
    if args.embeddings is None:
        args.embeddings = work / "embeddings.parquet"
        if not args.embeddings.exists():
            embedder = TextEmbedder(
                config.embed.model_path,
                batch_size=config.embed.batch_size,
                max_seq_length=config.embed.max_seq_length,
                normalize=config.embed.normalize,
            )
            table = embed_catalog(catalog, embedder, max_chars=config.embed.max_chars)
            ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
            write_embeddings(args.embeddings, ids, np.asarray(table.column("vector").to_pylist(), dtype=np.float32))
    item_ids, X = read_embeddings(args.embeddings)
    t0 = time.perf_counter()
    tokenizer = make_tokenizer(config.quantizer.model_copy(update={"threads": 1})).fit(X)
    unpruned = assign_sids(item_ids, tokenizer.encode(X), tokenizer.codebook_sizes)
    fit_s = time.perf_counter() - t0
    pruned = auto_prune(unpruned, config.prune)
    write_sids(work / "sids_unpruned.parquet", unpruned)
    write_sids(work / "sids.parquet", pruned.table)
    np.save(work / "item_vectors.npy", X)
    (work / "item_ids.json").write_text(json.dumps([str(i) for i in item_ids]))
    info = {
        "quantizer": config.quantizer.model_dump(),
        "fit_seconds": round(fit_s, 1),
        "prune_k": pruned.k,
        "dropped": pruned.dropped,
        "embeddings": str(args.embeddings),
    }
    (work / "sids.json").write_text(json.dumps(info, indent=1))
    log(f"SIDs fitted in {fit_s:.0f} s; pruning K={pruned.k}")
    return work


def load_inputs(work: Path):
    import pyarrow.parquet as pq

    from rqsid.generator.data import SidVocab, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask
    from rqsid.lookup import align_embeddings
    from rqsid.sids import read_sids

    table, unpruned = read_sids(work / "sids.parquet"), read_sids(work / "sids_unpruned.parquet")
    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(pq.read_table(work / "interactions.parquet"), vocab)
    ids = np.asarray(json.loads((work / "item_ids.json").read_text()), dtype=object)
    features = align_embeddings(vocab.item_ids, ids, np.load(work / "item_vectors.npy"))
    return vocab, seqs, head_item_mask(unpruned, vocab), features


# ---------------------------------------------------------------- one training job


def ours_config(args, seed: int, sid_only: bool = False):
    from rqsid.config import load_config, parse_override

    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({"generator.seed": seed, "generator.threads": 1, "generator.max_train_minutes": args.minutes})
    config = load_config(None, overrides).generator
    return config.sid_only() if sid_only else config  # sid-only: the generator as it was, SID log-probability alone


def run_job(args) -> dict:
    import torch

    torch.set_num_threads(1)
    kind, seed = args.job.split(":")
    seed = int(seed)
    vocab, seqs, head, features = load_inputs(args.work)
    t0 = time.perf_counter()
    if kind in ("ours", "ours-sid-only"):
        from rqsid.generator.train import evaluate_split, train_generator

        cfg = ours_config(args, seed, sid_only=kind == "ours-sid-only")
        trained = train_generator(seqs, vocab, cfg, progress=False, log=log, item_features=features)
        t1 = time.perf_counter()
        test, _ = evaluate_split(trained, seqs, "test", head)
        beam_s = time.perf_counter() - t1
        selected = None
        if trained.selected_model is not None:  # the refit replaced it: its test figure shows what the refit gained
            selected, _ = evaluate_split(trained.selection(), seqs, "test", head)
        out = {
            "test_before_refit": selected,
            "refit": trained.stats.get("refit"),
            "config": cfg.model_dump(),
            "best_epoch": trained.best.get("epoch"),
            "best_valid": trained.best.get("valid"),
            **{k: trained.stats[k] for k in ("train_seconds", "wall_seconds", "epochs")},
            "train_samples_per_s": trained.stats["samples_per_s"],
            "queries_per_s": round(seqs.n_users / beam_s, 1),
            "learning_curve": _curve(trained.history),
        }
    elif kind == "sasrec":
        from sasrec import SASRecConfig, evaluate, train_sasrec

        from rqsid.config import parse_override

        cfg = SASRecConfig(
            **{**dict(parse_override(s) for s in args.sasrec_set), "seed": seed, "max_train_minutes": args.minutes}
        )
        trained = train_sasrec(seqs, vocab.n_items, cfg, log=log)
        t1 = time.perf_counter()
        test = evaluate(trained.model, seqs, "test", head)
        out = {
            "test_before_refit": evaluate(trained.selected_model, seqs, "test", head) if trained.selected_model else None,
            "refit": trained.stats.get("refit"),
            "config": dataclasses.asdict(cfg),
            "best_epoch": trained.best.get("epoch"),
            "best_valid": trained.best.get("valid"),
            **{k: trained.stats[k] for k in ("train_seconds", "wall_seconds", "epochs")},
            "train_samples_per_s": trained.stats["samples_per_s"],
            "queries_per_s": round(seqs.n_users / (time.perf_counter() - t1), 1),
            "learning_curve": _curve(trained.history),
        }
    else:
        raise SystemExit(f"unknown job kind {kind!r}")
    out.update(
        {
            "model": kind,
            "seed": seed,
            "test": test,
            "job_seconds": round(time.perf_counter() - t0, 1),
            "load_avg_end": machine()["load_avg"],
        }
    )
    log(f"{args.job}: test R@10 {test['all']['recall@10']:.4f} N@10 {test['all']['ndcg@10']:.4f}")
    return out


def _curve(history: list[dict]) -> list[dict]:
    return [
        {
            "epoch": h["epoch"],
            "loss": round(h["loss"], 4),
            "elapsed_s": h["elapsed_s"],
            **({"valid_recall@10": h["valid"]["recall@10"], "valid_ndcg@10": h["valid"]["ndcg@10"]} if "valid" in h else {}),
        }
        for h in history
    ]


# ---------------------------------------------------------------- the whole benchmark


def run_all(args) -> int:
    work = prepare(args)
    models = args.models.split(",")
    jobs = [f"{m}:{s}" for s in args.seeds for m in models if m != "popularity"]
    jobs_dir = work / "jobs"
    jobs_dir.mkdir(exist_ok=True)

    def launch(job: str) -> dict:
        out = jobs_dir / f"{job.replace(':', '-')}.json"
        if not out.exists():
            cmd = [
                sys.executable,
                __file__,
                "--dataset",
                args.dataset,
                "--work",
                str(work),
                "--job",
                job,
                "--minutes",
                str(args.minutes),
                *sum((["--set", s] for s in args.set), []),
                *sum((["--sasrec-set", s] for s in args.sasrec_set), []),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            log(f"start {job}")
            with open(jobs_dir / f"{job.replace(':', '-')}.log", "w") as logfile:
                subprocess.run(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT, check=True)
        return json.loads(out.read_text())

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(launch, jobs))
    result = new_result(
        benchmark=f"{args.dataset} generator quality",
        dataset=args.dataset,
        seeds=args.seeds,
        minutes=args.minutes,
        jobs_at_once=args.jobs,
        sids=json.loads((work / "sids.json").read_text()),
        published_tiger=PUBLISHED.get(args.dataset),
        models={},
    )
    if "popularity" in models:
        result["models"]["popularity"] = {"test": popularity(work)}
    for name in [m for m in models if m != "popularity"]:
        result["models"][name] = aggregate([r for r in runs if r["model"] == name])
    if "ours" in result["models"] and "sasrec" in result["models"]:
        result["ratio_ours_to_sasrec"] = {
            m: result["models"]["ours"]["test"]["all"][m] / result["models"]["sasrec"]["test"]["all"][m] for m in METRICS
        }
    write_result(f"{args.dataset}_generator{args.tag}", result, markdown(result))
    return 0


def popularity(work: Path) -> dict:
    from rqsid.generator.data import eval_batch, item_counts_before
    from rqsid.generator.evaluate import popularity_ranking, split_metrics

    vocab, seqs, head, _ = load_inputs(work)
    batch = eval_batch(seqs, np.arange(seqs.n_users), "test", 1)
    return split_metrics(popularity_ranking(item_counts_before(seqs, vocab.n_items, "test"), seqs.n_users), batch.targets, head)


def aggregate(runs: list[dict]) -> dict:
    """Mean and standard error over seeds of every test figure; the runs themselves under `seeds`."""
    test, stderr = {}, {}
    for subset in runs[0]["test"]:
        values = {m: np.array([r["test"][subset][m] for r in runs]) for m in METRICS}
        test[subset] = {m: float(v.mean()) for m, v in values.items()} | {"n": runs[0]["test"][subset]["n"]}
        stderr[subset] = {m: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None for m, v in values.items()}
    mean = lambda key: float(np.mean([r[key] for r in runs]))  # noqa: E731
    return {
        "test": test,
        "stderr": stderr,
        "seeds": runs,
        "train_seconds": mean("train_seconds"),
        "train_samples_per_s": mean("train_samples_per_s"),
        "queries_per_s": mean("queries_per_s"),
    }


def markdown(result: dict) -> str:
    from common import header

    ds = result["dataset"]
    lines = header(
        f"{ds.capitalize()}: generative retriever vs SASRec",
        result,
        [
            f"Leave-one-out test, ranking over all items, history of the last 20 items; {len(result['seeds'])} training seeds "
            f"({', '.join(map(str, result['seeds']))}), mean ± standard error; up to {result['jobs_at_once']} runs shared the "
            f"{result['machine']['cpu_count']} cores at one torch thread each; budget {result['minutes']:.0f} min per run."
        ],
    )
    lines += [
        "| model | subset | users | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | train min | samples/s | queries/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if result.get("published_tiger"):
        t = result["published_tiger"]
        lines.append("| TIGER (published) | all | | " + " | ".join(f"{t[m]:.4f}" for m in METRICS) + " | | | |")
    for name, r in result["models"].items():
        for subset, m in r["test"].items():
            se = r.get("stderr", {}).get(subset, {})
            cells = [f"{m[k]:.4f}" + (f" ± {se[k]:.4f}" if se.get(k) else "") for k in METRICS]
            extra = (
                f"{r['train_seconds'] / 60:.1f} | {r['train_samples_per_s']:.0f} | {r['queries_per_s']:.0f}"
                if "train_seconds" in r and subset == "all"
                else " | | "
            )
            lines.append(f"| {name} | {subset} | {m['n']} | " + " | ".join(cells) + f" | {extra} |")
    if "ratio_ours_to_sasrec" in result:
        ratio = result["ratio_ours_to_sasrec"]
        lines += ["", "Ours / SASRec, same run: " + ", ".join(f"{m} {ratio[m]:.3f}x" for m in METRICS) + "."]
    lines += [
        "",
        "Per seed (test, all users):",
        "",
        "| model | seed | Recall@10 | NDCG@10 | before the refit: R@10 / N@10 | best epoch | valid R@10 | train min "
        "| load at end |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in result["models"].items():
        for s in r.get("seeds", []):
            before = (s.get("test_before_refit") or {}).get("all")
            lines.append(
                f"| {name} | {s['seed']} | {s['test']['all']['recall@10']:.4f} | {s['test']['all']['ndcg@10']:.4f} | "
                + (f"{before['recall@10']:.4f} / {before['ndcg@10']:.4f}" if before else "no refit")
                + f" | {s['best_epoch']} | {s['best_valid']['recall@10']:.4f} | {s['train_seconds'] / 60:.1f} "
                f"| {s['load_avg_end']} |"
            )
    if any(s.get("test_before_refit") for r in result["models"].values() for s in r.get("seeds", [])):
        lines += ["", "Refit: after early stopping, each model was retrained for its best epoch count with the validation "
                  "targets as training targets too; 'before the refit' is the early-stopped model on the same test users."]
    sids = result["sids"]
    lines += [
        "",
        f"SIDs: the default pipeline's ({sids['quantizer']['method']} {sids['quantizer']['levels']} x "
        f"{sids['quantizer']['codebook_size']}, adaptive pruning K = {sids['prune_k']}), fitted in {sids['fit_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work = args.work or Path(os.environ.get("RQSID_BENCH_WORK", "/work/scratch/quality")) / args.dataset
    if not args.job:
        return run_all(args)
    if not (args.work / "sids.parquet").exists():
        prepare(args)
    out = run_job(args)
    if args.idea:
        with IDEAS.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "idea": args.idea,
                        "dataset": args.dataset,
                        "job": args.job,
                        "date": time.strftime("%Y-%m-%d %H:%M"),
                        "overrides": args.set + args.sasrec_set,
                        "minutes": args.minutes,
                        "best_valid": out["best_valid"],
                        "test_before_refit_all": (out["test_before_refit"] or {}).get("all"),
                        "best_epoch": out["best_epoch"],
                        "test_all": out["test"]["all"],
                        "train_seconds": out["train_seconds"],
                        "load_avg_end": out["load_avg_end"],
                    }
                )
                + "\n"
            )
    else:
        (args.work / "jobs").mkdir(exist_ok=True)
        (args.work / "jobs" / f"{args.job.replace(':', '-')}.json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
