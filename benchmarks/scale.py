"""Scale: the whole re-index of a synthetic 100k and 1M item catalog from precomputed embeddings.

Embeddings: 384-d, skewed like real catalogs: a two-level Gaussian mixture (Zipf-sized topics, each
with Zipf-sized sub-topics), L2-normalised like sentence embeddings, written chunk by chunk to an
embeddings parquet (the pipeline's input format) under --work and reused by later runs.

Stages, each timed with its peak RSS (psutil sampling every 20 ms in the process; each catalog size
runs in its own fresh subprocess, so sizes never share memory): read the embeddings parquet, fit the
tokenizer on a fixed-size random sample, SID codes for all items (encode), assign_sids (dedup),
the distribution report, the real gates (tasks.gates: Great Expectations over the embeddings' per-row
stats and over the report), adaptive pruning (rqsid.prune.choose_k), trie build over the pruned SIDs,
and writing the SID parquet. The re-index total is their sum; the growth column is 1M / 100k.

    .venv/bin/python benchmarks/scale.py                 # 100k and 1M
    .venv/bin/python benchmarks/scale.py --quick         # 20k and 100k, short fit
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from common import Stages, header, log, md_table, new_result, write_result

DIM = 384
CHUNK = 100_000
TARGET_S, TARGET_MB = 600, 6 * 1024


# ---------------------------------------------------------------- synthetic embeddings


def _mixture(rng: np.random.Generator, topics: int, subtopics: int, dim: int):
    """Topic and sub-topic centres and Zipf weights (a skewed catalog: few big topics, a long tail)."""
    topic_centres = rng.normal(size=(topics, dim)).astype(np.float32)
    sub_offsets = 0.6 * rng.normal(size=(topics, subtopics, dim)).astype(np.float32)
    topic_p = 1.0 / np.arange(1, topics + 1) ** 1.1
    sub_p = 1.0 / np.arange(1, subtopics + 1) ** 1.2
    return topic_centres, sub_offsets, topic_p / topic_p.sum(), sub_p / sub_p.sum()


def write_synthetic(path: Path, n: int, seed: int = 0, topics: int = 400, subtopics: int = 25) -> Path:
    """n skewed, normalised 384-d embeddings as an embeddings parquet, generated CHUNK rows at a time."""
    from rqsid.embed import embeddings_table

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres, offsets, topic_p, sub_p = _mixture(rng, topics, subtopics, DIM)
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        topic = rng.choice(topics, size=m, p=topic_p)
        sub = rng.choice(subtopics, size=m, p=sub_p)
        X = centres[topic] + offsets[topic, sub] + 0.5 * rng.normal(size=(m, DIM)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        table = embeddings_table([f"item-{i}" for i in range(start, start + m)], X)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- one catalog size (child process)


def reindex(embeddings: Path, out_dir: Path, fit_sample: int, method: str, epochs: int | None, threads: int | None,
            real_gates: bool, tokenizer_dir: Path | None = None) -> dict[str, Any]:
    import torch

    from rqsid.config import GateConfig, PruneConfig, QuantizerConfig
    from rqsid.embed import read_embeddings
    from rqsid.metrics import table_report
    from rqsid.prune import choose_k
    from rqsid.quantize import load_tokenizer, make_tokenizer
    from rqsid.sids import assign_sids, write_sids
    from rqsid.trie import SidTrie

    if threads:
        torch.set_num_threads(threads)
    stages = Stages()
    with stages("read embeddings"):
        ids, X = read_embeddings(embeddings)
    n = len(ids)
    if tokenizer_dir:
        with stages("load tokenizer (no refit)"):
            tok = load_tokenizer(tokenizer_dir)
    else:
        overrides: dict[str, Any] = {"method": method, "threads": threads}
        if epochs is not None:
            overrides["epochs"] = epochs
        tok = make_tokenizer(QuantizerConfig(**overrides))
        with stages("fit (sample)", items=min(fit_sample, n)) as row:
            sample = np.sort(np.random.default_rng(0).choice(n, min(fit_sample, n), replace=False))
            tok.fit(X[sample], progress=False)
            row["epochs_run"] = sum(1 for h in tok.history if h.get("phase") == "train") or None
        tok.save(out_dir / f"tokenizer-{n}")
    with stages("encode (SID codes)"):
        codes = tok.encode(X)
    with stages("assign SIDs (dedup)"):
        table = assign_sids(ids, codes, tok.codebook_sizes)
    with stages("report"):
        report = table_report(table)
    with stages("gates" + (" (GX)" if real_gates else " (numpy equivalent)")) as row:
        row["passed"] = run_gates(ids, X, report, real_gates)
    del X
    prune = PruneConfig()
    with stages("prune (choose_k)") as row:
        pruned = choose_k(table, prune.gini_threshold, prune.max_collision_rate)
        row["k"] = pruned.k
    with stages("trie build") as row:
        trie = SidTrie.build(pruned.table.token_matrix(), pruned.table.vocab_size)
        row["nodes"], row["trie_mb"] = trie.n_nodes, round(trie.nbytes / 2**20, 1)
    with stages("write SIDs"):
        write_sids(out_dir / f"sids-{n}.parquet", pruned.table)
    stages.close()
    layers = report["layers"]
    return {"n_items": n, "stages": stages.rows, "total_s": round(sum(r["seconds"] for r in stages.rows), 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in stages.rows), 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "layer2_gini": layers[1]["gini"], "collision_rate": report["collision_rate"], "k": pruned.k, "dropped": pruned.dropped,
            "pruned_layer2_gini": pruned.report["layers"][1]["gini"], "pruned_collision_rate": pruned.report["collision_rate"],
            "utilisation": [layer["utilisation"] for layer in layers], "gate_config": GateConfig().model_dump()}


def run_gates(ids: np.ndarray, X: np.ndarray, report: dict, real: bool) -> bool:
    """The pipeline's gates: the real GX suites, or their numpy equivalent (same checks and bounds)."""
    from rqsid.config import GateConfig

    gate = GateConfig()
    if real:
        from tasks.gates import check_distribution, check_embeddings

        return check_embeddings(ids, X, DIM).success and check_distribution(report, gate).success
    # row norms without an (n, d) temporary; a NaN/inf anywhere in a row makes its norm non-finite
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    embeddings_ok = (len(set(ids)) == len(ids) and X.shape[1] == DIM and bool(np.isfinite(norms).all())
                     and bool(((norms >= 1e-3) & (norms <= 1e3)).all()))
    layers = report["layers"]
    distribution_ok = (layers[1]["gini"] <= gate.max_layer2_gini and report["collision_rate"] <= gate.max_collision_rate
                       and all(layer["utilisation"] >= gate.min_utilisation for layer in layers if layer["n_items"]))
    return bool(embeddings_ok and distribution_ok)


# ---------------------------------------------------------------- driver


def run_size(n: int, args) -> dict[str, Any]:
    path = write_synthetic(args.work / f"synthetic-{n}.parquet", n)
    out = args.work / f"result-{n}.json"
    cmd = [sys.executable, __file__, "--child", str(path), "--child-out", str(out), "--fit-sample", str(args.fit_sample),
           "--method", args.method, "--work", str(args.work)]
    cmd += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--real-gates"] if args.real_gates else []
    cmd += ["--tokenizer", str(args.tokenizer)] if args.tokenizer else []
    log(f"re-index of {n} items in a fresh process")
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    small, large = results[0], results[-1]
    rows = []
    for a, b in zip(small["stages"], large["stages"]):
        rows.append({"stage": a["stage"], "s_small": a["seconds"], "s_large": b["seconds"],
                     "time_growth": b["seconds"] / max(a["seconds"], 1e-9), "mb_small": a["peak_rss_mb"],
                     "mb_large": b["peak_rss_mb"], "mem_growth": b["peak_rss_mb"] / max(a["peak_rss_mb"], 1e-9)})
    rows.append({"stage": "**re-index total**", "s_small": small["total_s"], "s_large": large["total_s"],
                 "time_growth": large["total_s"] / small["total_s"], "mb_small": small["peak_rss_mb"],
                 "mb_large": large["peak_rss_mb"], "mem_growth": large["peak_rss_mb"] / small["peak_rss_mb"]})
    return rows


def _num(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    sizes = [r["n_items"] for r in result["sizes"]]
    fitted = (f"tokenizer {result['method']} fitted on a {result['fit_sample']}-item sample"
              + (f" ({result['epochs']} epochs max)" if result["epochs"] else " (config defaults, early stopping)"))
    notes = [f"Synthetic skewed 384-d embeddings (Zipf topics x Zipf sub-topics, normalised), "
             + ("a saved tokenizer" if result.get("tokenizer") else fitted)
             + f", torch threads {result['threads'] or 'default'}. Peak RSS sampled per stage (psutil, 20 ms) in a "
             "fresh process per size. Target: 1M re-index under 600 s and 6 GB peak."]
    if result.get("tokenizer"):
        notes.append(f"No refit: the tokenizer saved at {result['tokenizer']} is loaded (the stable re-index path).")
    lines = header("Scale: re-index from precomputed embeddings", result, notes)
    for res in result["sizes"]:
        lines += [f"## {res['n_items']:,} items: {res['total_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"(ru_maxrss {res['ru_maxrss_mb']:.0f} MB)", "",
                  f"Layer-2 Gini {res['layer2_gini']:.3f}, collision rate {res['collision_rate']:.4f}; pruned K={res['k']}: "
                  f"layer-2 Gini {_num(res['pruned_layer2_gini'])}, collision rate {res['pruned_collision_rate']:.4f}"
                  + (" (no K met both bounds: layer 2 dropped)" if res["dropped"] else "") + ".", ""]
        lines += md_table(res["stages"], [("stage", "stage", ""), ("seconds", "seconds", ".2f"), ("CPU s", "cpu_s", ".2f"),
                                          ("peak RSS MB", "peak_rss_mb", ".0f"), ("RSS before MB", "rss_before_mb", ".0f"),
                                          ("load before", "load_before", ".1f")]) + [""]
    if len(sizes) > 1:
        lines += [f"## Growth {sizes[0]:,} -> {sizes[-1]:,} ({sizes[-1] / sizes[0]:.0f}x items)", ""]
        lines += md_table(result["growth"], [("stage", "stage", ""), ("s small", "s_small", ".2f"), ("s large", "s_large", ".2f"),
                                             ("time x", "time_growth", ".2f"), ("MB small", "mb_small", ".0f"),
                                             ("MB large", "mb_large", ".0f"), ("memory x", "mem_growth", ".2f")]) + [""]
    big = result["sizes"][-1]
    for res in ([] if result.get("tokenizer") else result["sizes"]):
        fit_s = sum(r["seconds"] for r in res["stages"] if r["stage"].startswith("fit"))
        lines.append(f"- {res['n_items']:,} items: re-index {res['total_s']:.0f} s with the tokenizer fit ({fit_s:.0f} s, "
                     f"fixed-size sample: independent of the catalog size), {res['total_s'] - fit_s:.0f} s without it "
                     "(the stable re-index path, which reuses the published tokenizer while drift stays in bounds).")
    lines.append("")
    lines.append(f"Largest catalog ({big['n_items']:,}): {big['total_s']:.0f} s (target {TARGET_S} s: "
                 f"{'met' if big['total_s'] < TARGET_S else 'MISSED'}), peak {big['peak_rss_mb'] / 1024:.2f} GB "
                 f"(target 6 GB: {'met' if big['peak_rss_mb'] < TARGET_MB else 'MISSED'}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="20k and 100k items, 10-epoch fit on 5k")
    parser.add_argument("--fit-sample", type=int, default=20_000)
    parser.add_argument("--method", default="rqvae", choices=["rqvae", "rkmeans"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: more oversubscribes a busy 2-core box)")
    parser.add_argument("--real-gates", action="store_true", help="run the GX gates (tasks.gates) instead of the numpy equivalent")
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/bench-scale"))
    parser.add_argument("--tokenizer", type=Path, help="reuse this saved tokenizer (the stable re-index path: no refit)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--render", type=Path, help="only re-write the markdown of a results JSON")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = reindex(args.child, args.work, args.fit_sample, args.method, args.epochs, args.threads, args.real_gates,
                         args.tokenizer)
        args.child_out.write_text(json.dumps(result, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return
    if args.render:
        result = json.loads(args.render.read_text())
        write_result(args.render.stem, result, markdown(result), args.render.parent)
        return
    if args.quick:
        args.sizes, args.fit_sample, args.epochs = [20_000, 100_000], min(args.fit_sample, 5000), args.epochs or 10
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sizes = [run_size(n, args) for n in args.sizes]
    result = new_result(tokenizer=str(args.tokenizer) if args.tokenizer else None, method=args.method, fit_sample=args.fit_sample, epochs=args.epochs, threads=args.threads,
                        real_gates=args.real_gates, quick=args.quick, sizes=sizes, growth=growth(sizes),
                        wall_s=round(time.perf_counter() - start, 1))
    write_result("scale" + ("_quick" if args.quick else "") + args.tag, result, markdown(result))


if __name__ == "__main__":
    main()
