"""Serving figures on Beauty: `recommend` throughput (users/s for a batch of 1,000 users at beam 20, with
one torch thread and with two, against 100 single-user calls) and single-request latency (p50/p99)
through the registered MLflow model served by `mlflow models serve` on loopback.

The model: the generator at the default config (plus --set) trained for --minutes on Beauty, with SIDs
from residual k-means (3 x 256, fitted in seconds: decoding cost barely depends on how the SIDs were
made), packed as a bundle with the catalog's titles, registered in a temporary project home and served
by a real `mlflow models serve` process (one worker, torch's default threads). The histories are real
Beauty users' (all items but the last), a seeded sample.

    .venv/bin/python benchmarks/serving.py --dataset ../shared/data/amazon-beauty-2014 --embeddings beauty.parquet
    .venv/bin/python benchmarks/serving.py ... --bundle /work/scratch/serve/beauty-bundle   # reuse a trained bundle
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, header, log, md_table, new_result, write_result

from rqsid.catalog import validate_catalog, validate_interactions
from rqsid.config import load_config, parse_override
from rqsid.embed import read_embeddings
from rqsid.generator.bundle import is_bundle, load_bundle, make_bundle, save_bundle
from rqsid.generator.cases import last_seq_per_user
from rqsid.generator.data import SidVocab, sequences_from_interactions
from rqsid.generator.train import train_generator
from rqsid.home import ProjectHome
from rqsid.lookup import align_embeddings
from rqsid.quantize import make_tokenizer
from rqsid.quantize.base import torch_threads
from rqsid.sids import assign_sids
from rqsid.sources import read_source


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="the Beauty folder (or any folder with catalog.* + interactions.*)")
    p.add_argument("--embeddings", required=True, type=Path, help="item text embeddings parquet")
    p.add_argument("--bundle", type=Path, help="a saved bundle to serve (default: train one, saved under --work)")
    p.add_argument("--work", type=Path, default=Path("/work/scratch/serve"), help="where the trained bundle is kept")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget of the generator")
    p.add_argument("--users", type=int, default=1000, help="batch size of the throughput measurement")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--singles", type=int, default=100, help="single-user calls timed for comparison")
    p.add_argument("--requests", type=int, default=200, help="single-user HTTP requests timed")
    p.add_argument("--repeats", type=int, default=3, help="batch timings per thread count (the median is reported)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def train_bundle(catalog, interactions, emb_ids, X, config, folder: Path):
    ids = np.asarray(catalog.column("item_id").to_pylist(), dtype=object)
    X = align_embeddings(ids, emb_ids, X, "embeddings")
    quantizer = config.quantizer.model_copy(update={"method": "rkmeans", "threads": 1})
    tokenizer = make_tokenizer(quantizer).fit(X)
    table = assign_sids(ids, tokenizer.encode(X), tokenizer.codebook_sizes)
    vocab = SidVocab.from_sid_table(table)
    log(f"training the generator for at most {config.generator.max_train_minutes} min")
    features = X if config.generator.item_text else None
    trained = train_generator(sequences_from_interactions(interactions, vocab), vocab, config.generator,
                              progress=sys.stderr.isatty(), item_features=features)
    titles = np.asarray(catalog.column("title").to_pylist(), dtype=object)
    index = "benchmark-rkmeans-3x256"
    meta = {"catalog_name": "beauty", "index_version": index, "trained_index_version": index,
            "embed": config.embed.model_dump(mode="json")}
    bundle = make_bundle(trained, table, titles, meta, last_seq_per_user(interactions))
    save_bundle(bundle, folder)
    return bundle


def sample_histories(interactions, n: int, seed: int = 0) -> list[list[str]]:
    frame = interactions.select(["user_id", "item_id", "seq"]).to_pandas().sort_values(["user_id", "seq"], kind="stable")
    per_user = frame.groupby("user_id", sort=True)["item_id"].agg(list)
    per_user = per_user[per_user.map(len) >= 2]
    chosen = np.random.default_rng(seed).choice(len(per_user), min(n, len(per_user)), replace=False)
    return [[str(i) for i in per_user.iloc[u][:-1]] for u in chosen]


def throughput(bundle, histories: list[list[str]], beam: int, threads: int, repeats: int) -> dict[str, Any]:
    with torch_threads(threads):
        retriever = bundle.retriever()
        retriever.recommend(histories[:50], k=10, beam_size=beam)  # warm-up
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            retriever.recommend(histories, k=10, beam_size=beam)
            seconds.append(time.perf_counter() - t0)
    median = float(np.median(seconds))
    return {"threads": threads, "users": len(histories), "beam": beam, "seconds": [round(s, 3) for s in seconds],
            "users_per_s": round(len(histories) / median, 1)}


def single_calls(bundle, histories: list[list[str]], beam: int) -> dict[str, Any]:
    with torch_threads(1):
        retriever = bundle.retriever()
        t0 = time.perf_counter()
        for h in histories:
            retriever.recommend([h], k=10, beam_size=beam)
        elapsed = time.perf_counter() - t0
    return {"threads": 1, "users": len(histories), "beam": beam, "seconds": round(elapsed, 3),
            "users_per_s": round(len(histories) / elapsed, 1)}


def served_latency(bundle, histories: list[list[str]], beam: int) -> dict[str, Any]:
    """Register the bundle in a temporary home, serve it with `mlflow models serve`, time single requests."""
    with tempfile.TemporaryDirectory(prefix="rqsid-serving-bench-") as root:
        home = ProjectHome(Path(root)).activate(override=True)
        from tasks.services import free_port, start_model_server
        from tasks.serving import register_bundle
        from tasks.tracking import Tracker

        tracker = Tracker()
        with tracker.start_run("benchmark", tracker.experiment("beauty")):
            version = register_bundle(tracker, bundle, "beauty-generator", {"recall@10": 0.0})
        tracker.promote("beauty-generator", version)
        started = time.perf_counter()
        server = start_model_server(home, "models:/beauty-generator@champion", free_port())
        ready_s = time.perf_counter() - started
        try:
            for h in histories[:10]:  # warm-up
                _post(server.url, h, beam)
            latencies = []
            for h in histories:
                t0 = time.perf_counter()
                _post(server.url, h, beam)
                latencies.append(time.perf_counter() - t0)
        finally:
            server.stop()
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "beam": beam, "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "mean_ms": round(float(ms.mean()), 1),
            "max_ms": round(float(ms.max()), 1), "server_ready_s": round(ready_s, 1)}


def _post(url: str, history: list[str], beam: int) -> dict:
    body = json.dumps({"dataframe_records": [{"history": history}], "params": {"k": 10, "beam_size": beam}}).encode()
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def markdown(result: dict) -> str:
    r = result["runs"]
    lines = header("Serving the generator: batch throughput and served latency", result, [
        f"Model: {result['model']}.",
        "Throughput: `Retriever.recommend` on real Beauty histories (k=10), the median of the repeats; single calls: the "
        "same API one user at a time. Latency: one user per `POST /invocations` to `mlflow models serve` (one "
        "worker) on 127.0.0.1, sequential, after 10 warm-up requests; the client runs on the same 2 cores.",
    ])
    lines += md_table(r["throughput"] + [{**r["single"], "how": "single calls"}],
                      [("how", "how", ""), ("torch threads", "threads", "d"), ("users", "users", "d"), ("beam", "beam", "d"),
                       ("users/s", "users_per_s", ".1f")])
    lat = r["latency"]
    lines += [""] + md_table([lat], [("requests", "requests", "d"), ("beam", "beam", "d"), ("p50 ms", "p50_ms", ".1f"),
                                     ("p99 ms", "p99_ms", ".1f"), ("mean ms", "mean_ms", ".1f"), ("max ms", "max_ms", ".1f"),
                                     ("server ready s", "server_ready_s", ".1f")])
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(overrides=dict(parse_override(text) for text in args.set)
                         | {"generator.max_train_minutes": args.minutes, "generator.threads": 1})
    catalog, interactions = read_source(args.dataset)
    catalog = validate_catalog(catalog)[0]
    interactions = validate_interactions(interactions, catalog.column("item_id").to_numpy(zero_copy_only=False))[0]
    if args.bundle and is_bundle(args.bundle):
        bundle = load_bundle(args.bundle)
        log(f"serving the bundle in {args.bundle}")
    else:
        emb_ids, X = read_embeddings(args.embeddings)
        with torch_threads(1):
            bundle = train_bundle(catalog, interactions, emb_ids, X, config, args.bundle or args.work / "beauty-bundle")
    histories = sample_histories(interactions, max(args.users, args.requests))
    batch = histories[: args.users]
    runs = {"throughput": [{**throughput(bundle, batch, args.beam, t, args.repeats), "how": "one batch"} for t in (1, 2)],
            "single": single_calls(bundle, batch[: args.singles], args.beam)}
    log(f"throughput: {runs['throughput']}; single calls: {runs['single']}")
    runs["latency"] = served_latency(bundle, histories[: args.requests], args.beam)
    log(f"latency: {runs['latency']}")
    cfg = bundle.trained.cfg
    model = (f"{bundle.meta['n_items']} items, d_model {cfg.d_model}, {cfg.n_layers} layers, item_text={cfg.item_text}, "
             f"rank_mix={cfg.rank_mix}, candidates={cfg.candidates}, trained {bundle.trained.stats.get('train_seconds')} s")
    result = new_result(dataset=str(args.dataset), model=model, runs=runs)
    write_result(f"serving{args.tag}", result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
