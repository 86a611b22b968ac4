"""The TIGER Beauty benchmark for the generative retriever, end to end, on 2 CPU cores.

Embeds the Beauty catalog (or reuses an embeddings parquet), fits our RQ-VAE, assigns SIDs, prunes
them adaptively (rqsid.prune.choose_k via auto_prune), then trains and evaluates (leave-one-out test
split, ranking over all 12,101 items):
  - a popularity baseline,
  - the generator on the unpruned SIDs and on the pruned SIDs (head/tail split by unpruned layer-2 token),
  - optionally the generator on the public reference RQ-VAE SIDs (--reference),
  - optionally the query-conditioned search variant (--search; reported separately: the query is
    derived from the TARGET item's category path and brand, so it is a different task).
Writes benchmarks/results/beauty_generator.json and .md beside TIGER's published figures.

    .venv/bin/python benchmarks/beauty_generator.py --minutes 80 --embeddings /work/scratch/emb/beauty.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from rqsid.config import load_config, parse_override
from rqsid.home import repo_root, shared_data_dir

TIGER = {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}
RESULTS = repo_root() / "benchmarks" / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--embeddings", type=Path, help="Beauty item embeddings parquet (default: embed the catalog)")
    p.add_argument("--minutes", type=float, default=80.0, help="training budget per generator (generator.max_train_minutes)")
    p.add_argument("--variants", default="popularity,unpruned,pruned", help="comma list of popularity,unpruned,pruned,reference,search")
    p.add_argument("--reference", action="store_true", help="also train on the reference rqvae SIDs")
    p.add_argument("--search", action="store_true", help="also train the query-conditioned search variant")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. generator.lr=0.002")
    p.add_argument("--threads", type=int, default=int(os.environ.get("RQSID_THREADS", "1")),
                   help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("RQSID_BENCH_WORK", "/work/scratch/gen/bench")),
                   help="folder for embeddings, tokenizer, SIDs and models (outside the repo)")
    p.add_argument("--reuse-sids", action="store_true", help="reuse WORK/sids.parquet when it was fitted with the same quantizer config")
    p.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                   help="only merge the results of several runs (e.g. variants run as parallel processes) into beauty_generator{tag}.md")
    p.add_argument("--tag", default="", help="suffix of the result files (beauty_generator{tag}.json/.md)")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_embeddings(args, catalog, config, work: Path):
    from rqsid.embed import TextEmbedder, embed_catalog, read_embeddings, write_embeddings

    if args.embeddings:
        return read_embeddings(args.embeddings)
    cached = work / "embeddings.parquet"
    if cached.exists():
        return read_embeddings(cached)
    log(f"embedding {catalog.num_rows} items")
    embedder = TextEmbedder(config.embed.model_path, batch_size=config.embed.batch_size, max_seq_length=config.embed.max_seq_length)
    table = embed_catalog(catalog, embedder, max_chars=config.embed.max_chars)
    ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
    X = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    write_embeddings(cached, ids, X)
    return ids, X


def fit_sids(item_ids, X, config, work: Path, reuse: bool = False) -> tuple[dict, object, object]:
    """Our RQ-VAE SIDs (unpruned) and their adaptive pruning; with timing and the pruning decision."""
    from rqsid.metrics import table_report
    from rqsid.prune import auto_prune
    from rqsid.quantize import make_tokenizer
    from rqsid.sids import assign_sids, write_sids

    from rqsid.sids import read_sids

    cached = work / "sids.parquet"
    fit_info = work / "fit.json"
    if reuse and cached.exists() and fit_info.exists() and json.loads(fit_info.read_text())["quantizer"] == config.quantizer.model_dump():
        log(f"reusing the SIDs in {cached}")
        unpruned, fit_s = read_sids(cached), json.loads(fit_info.read_text())["fit_seconds"]
    else:
        t0 = time.perf_counter()
        log(f"fitting {config.quantizer.method} {config.quantizer.levels}x{config.quantizer.codebook_size}")
        tokenizer = make_tokenizer(config.quantizer).fit(X)
        unpruned = assign_sids(item_ids, tokenizer.encode(X), tokenizer.codebook_sizes)
        fit_s = time.perf_counter() - t0
        write_sids(cached, unpruned)
        fit_info.write_text(json.dumps({"quantizer": config.quantizer.model_dump(), "fit_seconds": fit_s}))
    result = auto_prune(unpruned, config.prune)
    write_sids(work / "sids_pruned.parquet", result.table)
    before, after = table_report(unpruned), result.report
    info = {
        "quantizer": config.quantizer.model_dump(), "fit_seconds": round(fit_s, 1),
        "prune": {"k": result.k, "dropped": result.dropped, **config.prune.model_dump()},
        "layer2_gini": {"unpruned": before["layers"][1]["gini"], "pruned": after["layers"][1]["gini"]},
        "collision_rate": {"unpruned": before["collision_rate"], "pruned": after["collision_rate"]},
    }
    log(f"SIDs: layer-2 Gini {info['layer2_gini']['unpruned']:.3f} -> {info['layer2_gini']['pruned']:.3f} with K={result.k}")
    return info, unpruned, result.table


def run_generator(name, table, unpruned, inter, catalog, gcfg, embed_cfg, work: Path) -> dict:
    from rqsid.generator.data import SidVocab, derive_queries, embed_queries, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask
    from rqsid.generator.train import evaluate_split, train_generator

    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(inter, vocab)
    if gcfg.use_query:
        from rqsid.embed import TextEmbedder

        seqs = derive_queries(seqs, vocab, catalog, seed=gcfg.seed)
        seqs = embed_queries(seqs, TextEmbedder(embed_cfg.model_path, batch_size=embed_cfg.batch_size))
    log(f"training generator '{name}' ({vocab.n_items} items, SID length <= {vocab.max_len}, {gcfg.max_train_minutes} min budget)")
    trained = train_generator(seqs, vocab, gcfg, out_dir=work / f"model-{name}", progress=sys.stderr.isatty())
    t0 = time.perf_counter()
    metrics, _ = evaluate_split(trained, seqs, "test", head_item_mask(unpruned, vocab), progress=sys.stderr.isatty())
    beam_s = time.perf_counter() - t0
    out = {
        "test": metrics, "best_epoch": trained.best.get("epoch"), "best_valid": trained.best.get("valid"),
        "train_seconds": trained.stats["train_seconds"], "wall_seconds": trained.stats["wall_seconds"],
        "epochs": trained.stats["epochs"], "train_samples_per_s": trained.stats["samples_per_s"],
        "beam_queries_per_s": round(seqs.n_users / beam_s, 1), "beam_size": gcfg.beam_size,
        "learning_curve": [{k: h[k] for k in ("epoch", "loss", "elapsed_s")} | ({"valid_recall@10": h["valid"]["recall@10"], "valid_ndcg@10": h["valid"]["ndcg@10"]} if "valid" in h else {})
                           for h in trained.history],
        "config": gcfg.model_dump(),
    }
    log(f"{name}: test R@10 {metrics['all']['recall@10']:.4f} N@10 {metrics['all']['ndcg@10']:.4f}")
    return out


def popularity(inter, table, unpruned) -> dict:
    from rqsid.generator.data import SidVocab, eval_batch, item_counts_before, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask, popularity_ranking, split_metrics

    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(inter, vocab)
    batch = eval_batch(seqs, np.arange(seqs.n_users), "test", 1)
    ranked = popularity_ranking(item_counts_before(seqs, vocab.n_items, "test"), seqs.n_users)
    return {"test": split_metrics(ranked, batch.targets, head_item_mask(unpruned, vocab))}


def machine() -> dict:
    """benchmarks.common.machine() plus the torch build and threads the generator ran with."""
    import torch

    from common import machine as common_machine

    return {**common_machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def markdown(results: dict) -> str:
    rows = ["| model | subset | users | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | train min | samples/s | beam q/s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            "| TIGER (published) | all | 22363 | " + " | ".join(f"{TIGER[m]:.4f}" for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")) + " | | | |"]
    for name, r in results["models"].items():
        for subset, m in r["test"].items():
            extra = (f"{r['train_seconds'] / 60:.1f} | {r['train_samples_per_s']:.0f} | {r['beam_queries_per_s']:.0f}"
                     if "train_seconds" in r and subset == "all" else " | | ")
            rows.append(f"| {name} | {subset} | {m['n']} | " + " | ".join(f"{m[k]:.4f}" for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")) + f" | {extra} |")
    sids = results.get("sids", {})
    notes = [
        f"\nBeauty (P5 split), leave-one-out test, ranking over all items; beam {results['beam_size']}.",
        "Head/tail: targets whose unpruned layer-2 token is among the most frequent layer-2 tokens covering half of the items.",
        "The search variant (if present) conditions on a query derived from the target's category path and brand: another task, not comparable with the rows above.",
    ]
    if results.get("pruned_note"):
        notes.append(f"Pruned SIDs: {results['pruned_note']}.")
    if sids:
        notes.append(f"Our SIDs: {sids['quantizer']['method']} {sids['quantizer']['levels']}x{sids['quantizer']['codebook_size']}, "
                     f"layer-2 Gini {sids['layer2_gini']['unpruned']:.3f} unpruned -> {sids['layer2_gini']['pruned']:.3f} pruned (K={sids['prune']['k']}).")
    m = results["machine"]
    notes.append(f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} thread(s); "
                 f"load average at the end {m['load_avg']} (shared machine). Command: `{results['command']}`")
    return "\n".join(rows) + "\n" + "\n".join(notes) + "\n"


def main(argv=None) -> int:
    import torch

    from rqsid.importers import import_beauty
    from rqsid.sids import load_reference_index

    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, args.tag)
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    overrides = dict(parse_override(s) for s in args.set)
    overrides["generator.max_train_minutes"] = args.minutes
    config = load_config(None, overrides)
    variants = args.variants.split(",") + (["reference"] if args.reference else []) + (["search"] if args.search else [])
    beauty = shared_data_dir() / "amazon-beauty-2014"
    catalog, inter = import_beauty(beauty)
    results = {"benchmark": "beauty", "beam_size": config.generator.beam_size, "tiger_published": TIGER,
               "command": " ".join([Path(sys.argv[0]).name if argv is None else "beauty_generator.py", *(sys.argv[1:] if argv is None else argv)]),
               "models": {}}
    needs_ours = any(v in variants for v in ("popularity", "unpruned", "pruned", "search"))
    if needs_ours:
        item_ids, X = load_embeddings(args, catalog, config, work)
        results["sids"], unpruned, pruned = fit_sids(item_ids, X, config, work, reuse=args.reuse_sids)
    else:
        unpruned = pruned = load_reference_index(beauty / "reference-sids" / "rqvae.index.json", id_offset=1)
    if "popularity" in variants:
        results["models"]["popularity"] = popularity(inter, unpruned, unpruned)
    runs = {"unpruned": (unpruned, config.generator), "pruned": (pruned, config.generator),
            "reference": (load_reference_index(beauty / "reference-sids" / "rqvae.index.json", id_offset=1), config.generator),
            "search": (unpruned, config.generator.model_copy(update={"use_query": True}))}
    for name in ("unpruned", "pruned", "reference", "search"):
        if name == "pruned" and "pruned" in variants and results["sids"]["prune"]["k"] == 0:
            log("pruning chose K=0 (layer 2 already passes the gate): the pruned SIDs ARE the unpruned ones; not trained twice")
            results["pruned_note"] = "choose_k returned K=0: layer-2 Gini already under prune.gini_threshold, so the pruned run equals the unpruned one"
            continue
        if name in variants:
            table, gcfg = runs[name]
            split_by = table if name == "reference" else unpruned
            key = {"unpruned": "generator (our SIDs, unpruned)", "pruned": "generator (our SIDs, pruned)",
                   "reference": "generator (reference rqvae SIDs)", "search": "search: generator + derived query (unpruned)"}[name]
            results["models"][key] = run_generator(name, table, split_by, inter, catalog, gcfg, config.embed, work)
            _write(results, args.tag)  # keep what is done if a later run is interrupted
    _write(results, args.tag)
    print(markdown(results))
    return 0


def combine(paths: list[Path], tag: str) -> int:
    """One table from several runs' JSON; each row keeps the command and the load of the run that made it."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    merged = {**runs[0], "models": {}, "command": "; ".join(r["command"] for r in runs),
              "combined_from": [str(p) for p in paths]}
    for run in runs:
        merged["models"].update(run["models"])
        if "sids" in run and ("sids" not in merged or "generator (our SIDs, pruned)" in run["models"]):
            merged["sids"] = run["sids"]  # the pruning that the pruned row was trained on
    runs_md = ["", "Runs combined (each its own process with one torch thread; up to four of them and other jobs shared the 2 cores, so compare quality, not seconds):"]
    runs_md += [f"- `{r['command']}`: {', '.join(r['models'])}; load average at its end {r['machine'].get('load_avg', r['machine'].get('load_average_at_end'))}" for r in runs]
    _save(merged, tag, markdown(merged) + "\n".join(runs_md) + "\n")
    print(markdown(merged))
    return 0


def _write(results: dict, tag: str) -> None:
    results["machine"] = machine()
    _save(results, tag, markdown(results))


def _save(results: dict, tag: str, text: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"beauty_generator{tag}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"beauty_generator{tag}.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
