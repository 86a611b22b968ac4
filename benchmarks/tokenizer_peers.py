"""Tokenizers against peers at an equal code budget (3 levels x 256 codes = 3 x 8 bits per item).

(Not named tokenizers.py: scripts run with benchmarks/ first on sys.path, and that name would shadow
the Hugging Face `tokenizers` package that sentence-transformers imports.)

Ours: the RQ-VAE (`make_tokenizer` with method rqvae) and residual k-means (rkmeans); peers: faiss
ResidualQuantizer (3 x 8 bits, its default beam-search training and encoding) and
vector_quantize_pytorch.ResidualVQ (3 quantizers x 256, EMA codebooks, k-means init, dead-code
expiry), on the real Beauty and Scientific item embeddings (all-MiniLM-L6-v2, 384-d).

Space of the comparison: every method sees the same standardised embeddings (per-dimension mean
and std of the dataset: our tokenizers do this inside, the peers get the standardised matrix), and
the reconstruction error of every method is measured back in the RAW embedding space: the mean over
items of ||x - x_hat||^2 (our `reconstruction_error`), also given relative to the data's total
variance (share of variance left unexplained). Codes go through rqsid.metrics.distribution_report
(utilisation per layer, layer-2 Gini, collision rate). All methods run with the same torch / OpenMP
thread count (--threads).

    .venv/bin/python benchmarks/tokenizer_peers.py              # both datasets, full
    .venv/bin/python benchmarks/tokenizer_peers.py --quick      # a 3,000-item subset, short fits
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from common import header, load, log, md_table, new_result, write_result
from rqsid.config import QuantizerConfig
from rqsid.home import shared_data_dir
from rqsid.metrics import distribution_report
from rqsid.quantize import make_tokenizer
from rqsid.quantize.base import Standardiser

LEVELS, SIZE = 3, 256
CACHE = Path("/work/scratch/emb")
SOURCES = {"beauty": "amazon-beauty-2014", "scientific": "amazon-scientific-2018"}


def load_embeddings(name: str, path: Path | None, work: Path) -> tuple[np.ndarray, str]:
    """The dataset's item embeddings: the given file, the scratch cache, or embedded now from the shared data."""
    from rqsid.embed import TextEmbedder, item_text, read_embeddings, write_embeddings
    from rqsid.importers import import_dataset

    for candidate in (path, CACHE / f"{name}.parquet", work / f"{name}.parquet"):
        if candidate is not None and Path(candidate).exists():
            return read_embeddings(candidate)[1], str(candidate)
    catalog, _ = import_dataset(shared_data_dir() / SOURCES[name])
    log(f"{name}: no cached embeddings; embedding {catalog.num_rows} items")
    X = TextEmbedder().embed(item_text(catalog))
    out = write_embeddings(work / f"{name}.parquet", catalog.column("item_id").to_pylist(), X)
    return X, f"computed -> {out}"


# ---------------------------------------------------------------- the four methods
# Each returns (fit, encode, decode): fit(Z) on the standardised matrix; encode(Z) -> codes (n, 3);
# decode(codes) -> standardised reconstruction. Ours are wrapped to speak the same (standardised)
# language: they standardise inside with the same statistics, so we pass raw X and map back.


# Our configurations, by name: (row label, quantizer settings). The session-2 rows pin every setting
# that has changed since, so they stay what they were; the others are read over today's defaults.
# Every row is 3 x 256 with the given thread count (the catalog-sized code space is off here).
SESSION2_RQVAE = {"method": "rqvae", "hidden_dims": [512, 256, 128], "latent_dim": 32, "epochs": 100, "batch_size": 256,
                  "lr": 2e-3, "lr_schedule": "constant", "warmup_epochs": 5, "codebook_init_iters": 50, "kmeans_balance": 0.0,
                  "code_usage_weight": 0.0, "code_split_factor": None, "fit_sample": None}
SESSION2_RECON_FIRST = {**SESSION2_RQVAE, "hidden_dims": [512], "latent_dim": 128, "epochs": 20, "batch_size": 512, "lr": 7e-3,
                        "lr_schedule": "cosine"}
NO_USAGE = {"code_usage_weight": 0.0}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "session2-rqvae": ("session 2 default RQ-VAE (TIGER: 3 hidden layers, 32-d latent, 100 epochs)", SESSION2_RQVAE),
    "session2-recon-first": ("session 2 recon-first RQ-VAE (1 hidden layer, 128-d latent, 20 cosine epochs)", SESSION2_RECON_FIRST),
    "session2-rkmeans": ("session 2 residual k-means (k-means++ seeds, plain Lloyd)",
                         {"method": "rkmeans", "kmeans_iters": 50, "kmeans_balance": 0.0, "fit_sample": None}),
    "default": ("**default RQ-VAE** (recon-first + balanced k-means seeding + code-usage term 0.1 on 128 rows)", {}),
    "rkmeans": ("**residual k-means** (balanced k-means: first half of the iterations)", {"method": "rkmeans"}),
    # the RQ-VAE variants tried on the way (the default's settings, changed as named)
    "balanced-seeding-50": ("recon-first + balanced seeding (50 k-means iterations), no usage term",
                            {**NO_USAGE, "codebook_init_iters": 50}),
    "balanced-seeding": ("recon-first + balanced seeding (20 k-means iterations), no usage term", NO_USAGE),
    "usage-whole-batch": ("default, usage term on the whole batch", {"code_usage_rows": None}),
    "usage-0.03": ("default, usage weight 0.03", {"code_usage_weight": 0.03}),
    "usage-0.2": ("default, usage weight 0.2", {"code_usage_weight": 0.2}),
    "split-2": ("balanced seeding + splitting codes over 2x their share, no usage term", {**NO_USAGE, "code_split_factor": 2.0}),
    "split-3": ("balanced seeding + splitting codes over 3x their share, no usage term", {**NO_USAGE, "code_split_factor": 3.0}),
    "seeding-10-all-balanced": ("default, seeding 10 k-means iterations, all balanced",
                                {"codebook_init_iters": 10, "kmeans_balanced_share": 1.0}),
    "latent-96": ("default, 96-d latent", {"latent_dim": 96}),
    "hidden-384": ("default, hidden layer 384", {"hidden_dims": [384]}),
    "epochs-16": ("default, 16 epochs", {"epochs": 16}),
    "warmup-3": ("default, 3 warm-up epochs", {"warmup_epochs": 3}),
    "batch-1024": ("default, batch 1024", {"batch_size": 1024}),
    "batch-1024-lr-0.01-15-epochs": ("default, batch 1024, lr 0.01, 15 epochs", {"batch_size": 1024, "lr": 1e-2, "epochs": 15}),
}
DEFAULT_VARIANTS = list(VARIANTS)
PEERS = ("faiss ResidualQuantizer", "vector-quantize-pytorch ResidualVQ")


def ours(overrides: dict[str, Any], std: Standardiser, epochs: int | None, threads: int):
    settings = {**overrides, "threads": threads, "levels": LEVELS, "codebook_size": SIZE, "levels_up_to_items": None}
    if epochs is not None and settings.get("method", "rqvae") == "rqvae":
        settings["epochs"] = epochs
    tok = make_tokenizer(QuantizerConfig(**settings))
    raw = lambda Z: std.inverse(torch.from_numpy(Z)).numpy()  # noqa: E731

    def fit(Z):
        tok.fit(raw(Z), progress=False)

    return fit, lambda Z: tok.encode(raw(Z)), lambda codes: std.forward(torch.from_numpy(tok.decode(codes))).numpy()


def faiss_rq(threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    state: dict[str, Any] = {}

    def fit(Z):
        state["rq"] = faiss.ResidualQuantizer(Z.shape[1], LEVELS, 8)
        state["rq"].train(np.ascontiguousarray(Z))

    def encode(Z):
        return state["rq"].compute_codes(np.ascontiguousarray(Z)).astype(np.int64)  # 8 bits: one byte per level

    return fit, encode, lambda codes: state["rq"].decode(np.ascontiguousarray(codes.astype(np.uint8)))


def vq_pytorch(epochs: int, batch: int, seed: int):
    from vector_quantize_pytorch import ResidualVQ

    state: dict[str, Any] = {}

    def fit(Z):
        torch.manual_seed(seed)
        rvq = ResidualVQ(dim=Z.shape[1], num_quantizers=LEVELS, codebook_size=SIZE, kmeans_init=True,
                         kmeans_iters=10, threshold_ema_dead_code=2, decay=0.8)
        rvq.train()
        X = torch.from_numpy(Z)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # EMA codebooks: the forward pass in train mode updates them
            for _ in range(epochs):
                order = torch.randperm(len(X), generator=gen)
                for s in range(0, len(X), batch):
                    rvq(X[order[s:s + batch]][None])
        state["rvq"] = rvq.eval()

    @torch.no_grad()
    def encode(Z):
        return state["rvq"](torch.from_numpy(Z)[None])[1][0].numpy().astype(np.int64)

    @torch.no_grad()
    def decode(codes):
        return state["rvq"].get_output_from_indices(torch.from_numpy(codes)[None])[0].numpy()

    return fit, encode, decode


def timed(fn: Callable, *args) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process): CPU time moves less with the machine's load."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - start, time.process_time() - cpu


def measure(name: str, method, X: np.ndarray, std: Standardiser, total_var: float, repeats: int = 1) -> dict[str, Any]:
    """Fits `repeats` times (every method is deterministic under its seed) and keeps the fastest, so a
    burst of load from other work during one fit does not decide the time; quality is the last fit's."""
    fit, encode, decode = method
    Z = std.forward(torch.from_numpy(X)).numpy()
    load_before = load()
    times = [timed(fit, Z)[1:] for _ in range(repeats)]
    fit_s, fit_cpu_s = min(t[0] for t in times), min(t[1] for t in times)
    codes, encode_s, _ = timed(encode, Z)
    X_hat = std.inverse(torch.from_numpy(np.ascontiguousarray(decode(codes), dtype=np.float32))).numpy()
    errors = ((X_hat - X) ** 2).sum(1)
    errors_std = ((std.forward(torch.from_numpy(X_hat)).numpy() - Z) ** 2).sum(1)
    report = distribution_report(codes, [SIZE] * LEVELS)
    row = {"method": name, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "load_before": load_before, "encode_s": encode_s, "encode_items_per_s": len(X) / encode_s,
           "recon_error": float(errors.mean()), "recon_rel": float(errors.mean() / total_var),
           "recon_error_std": float(errors_std.mean()),
           "collision_rate": report["collision_rate"], "layer2_gini": report["layers"][1]["gini"]}
    for layer in report["layers"]:
        row[f"util_l{layer['level']}"] = layer["utilisation"]
        row[f"gini_l{layer['level']}"] = layer["gini"]
        row[f"max_share_l{layer['level']}"] = layer["max_share"]
    row["max_share"] = max(layer["max_share"] for layer in report["layers"])
    log(f"  {name}: fit {fit_s:.1f} s, encode {encode_s:.2f} s, recon {row['recon_error']:.4f} "
        f"({row['recon_rel']:.3f} of variance), L2 Gini {row['layer2_gini']:.3f}, collisions {row['collision_rate']:.4f}")
    return row


def run_dataset(name: str, X: np.ndarray, args) -> dict[str, Any]:
    std = Standardiser.fit(torch.from_numpy(X))
    total_var = float(((X - X.mean(0)) ** 2).sum(1).mean())
    methods = {label: ours(overrides, std, args.rqvae_epochs, args.threads)
               for label, overrides in (VARIANTS[v] for v in args.variants)}
    methods[PEERS[0]] = faiss_rq(args.threads)
    methods[PEERS[1]] = vq_pytorch(args.vq_epochs, args.vq_batch, seed=0)
    log(f"{name}: {X.shape[0]} x {X.shape[1]}, total variance {total_var:.4f}")
    rows = [measure(label, method, X, std, total_var, args.repeats) for label, method in methods.items()]
    peers = [r for r in rows if r["method"] in PEERS]
    faiss_row = next(r for r in peers if r["method"].startswith("faiss"))
    best_peer = min(peers, key=lambda r: r["recon_error"])
    for row in rows:
        row["fit_vs_faiss"] = row["fit_s"] / faiss_row["fit_s"]
        row["fit_cpu_vs_faiss"] = row["fit_cpu_s"] / faiss_row["fit_cpu_s"]
        row["recon_vs_faiss"] = row["recon_error"] / faiss_row["recon_error"]
        row["collisions_vs_faiss"] = row["collision_rate"] / faiss_row["collision_rate"]
        row["recon_vs_best_peer"] = row["recon_error"] / best_peer["recon_error"]
    return {"dataset": name, "n_items": int(X.shape[0]), "dim": int(X.shape[1]), "total_variance": total_var,
            "best_peer": best_peer["method"], "rows": rows}


COLUMNS = [("method", "method", ""), ("fit s", "fit_s", ".1f"), ("fit CPU s", "fit_cpu_s", ".1f"),
           ("fit CPU / faiss", "fit_cpu_vs_faiss", ".2f"), ("load", "load_before", ".1f"), ("encode s", "encode_s", ".2f"),
           ("recon error", "recon_error", ".4f"), ("recon / variance", "recon_rel", ".3f"),
           ("recon / faiss", "recon_vs_faiss", ".3f"), ("recon (standardised)", "recon_error_std", ".1f"),
           ("util L1", "util_l1", ".3f"), ("util L2", "util_l2", ".3f"), ("util L3", "util_l3", ".3f"),
           ("Gini L1", "gini_l1", ".3f"), ("Gini L2", "gini_l2", ".3f"), ("Gini L3", "gini_l3", ".3f"),
           ("max share", "max_share", ".3f"), ("collision rate", "collision_rate", ".4f"),
           ("collisions / faiss", "collisions_vs_faiss", ".2f")]


def markdown(result: dict[str, Any]) -> str:
    ours_settings = "; ".join(f"**{VARIANTS[v][0].replace('**', '')}**: {_settings(v)}" for v in result["variants"])
    notes = [
        f"Equal code budget: {LEVELS} levels x {SIZE} codes (3 x 8 bits) for every method; same {result['threads']} "
        "torch/OpenMP thread(s) each, one method at a time. Reconstruction error = mean over items of the squared L2 error in the raw "
        "embedding space (every method fits on the same per-dimension standardised embeddings and is mapped back); "
        "'recon / variance' = that error / the data's total variance (share left unexplained); "
        "'recon (standardised)' = the same error in the standardised space that every method is fitted in. "
        "'fit CPU s' = CPU time of the fitting process (moves less with the machine's load than wall time; the "
        "ratio to faiss is taken on it); 'load' = 1-minute load average before the fit; 'max share' = the largest "
        f"share of the items that one code holds, over the levels. Each method fitted {result.get('repeats', 1)} time(s), "
        "the fastest fit reported.",
        f"Settings over the defaults of this commit (QuantizerConfig: {_settings(None)}): {ours_settings}. RQ-VAE "
        f"epochs: {result['rqvae_epochs'] or 'as set'} (early stopping). faiss defaults (beam-search training and encoding), "
        f"ResidualVQ {result['vq_epochs']} epochs of batch {result['vq_batch']} (EMA decay 0.8, k-means init, "
        "dead-code threshold 2)." + (" QUICK mode: subset and short fits." if result["quick"] else ""),
    ]
    lines = header("Tokenizers vs peers (faiss, vector-quantize-pytorch)", result, notes)
    for ds in result["datasets"]:
        lines += [f"## {ds['dataset']} ({ds['n_items']} items x {ds['dim']}, embeddings: {ds['source']})", ""]
        lines += md_table(ds["rows"], COLUMNS) + [""]
    return "\n".join(lines)


def _settings(variant: str | None) -> str:
    """A variant's settings (None: the defaults), as field=value."""
    if variant is None:
        fields = QuantizerConfig().model_dump(exclude={"levels", "codebook_size", "threads", "seed"})
    else:
        fields = VARIANTS[variant][1] or {"(defaults)": ""}
    return ", ".join(f"{k}={v}" if v != "" else k for k, v in fields.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--embeddings", nargs="*", type=Path, default=[], help="one parquet per dataset, in order")
    parser.add_argument("--quick", action="store_true", help="3,000 items, RQ-VAE 15 epochs, ResidualVQ 5 epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="fits per method; the fastest is reported")
    parser.add_argument("--rqvae-epochs", type=int, default=None, help="default: the quantizer config's")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                        help="our configurations to measure (peers always run)")
    parser.add_argument("--vq-epochs", type=int, default=20)
    parser.add_argument("--vq-batch", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/bench-tokenizers"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if args.quick:
        args.rqvae_epochs, args.vq_epochs = args.rqvae_epochs or 15, min(args.vq_epochs, 5)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    result = new_result(threads=args.threads, quick=args.quick, rqvae_epochs=args.rqvae_epochs, variants=args.variants, repeats=args.repeats,
                        variant_settings={v: VARIANTS[v][1] for v in args.variants}, defaults=QuantizerConfig().model_dump(),
                        vq_epochs=args.vq_epochs, vq_batch=args.vq_batch, datasets=[])
    for i, name in enumerate(args.datasets):
        X, source = load_embeddings(name, args.embeddings[i] if i < len(args.embeddings) else None, args.work)
        if args.quick:
            X = X[np.random.default_rng(0).permutation(len(X))[:3000]]
        result["datasets"].append({**run_dataset(name, np.ascontiguousarray(X, dtype=np.float32), args), "source": source})
    write_result("tokenizer_peers" + ("_quick" if args.quick else "") + args.tag, result, markdown(result))


if __name__ == "__main__":
    main()
