"""Scale: the whole re-index of a 100k and a 1M item catalog from precomputed embeddings.

Embeddings (--data): `realistic` (default) mixes and perturbs the real Beauty, Scientific and Sports
embeddings (benchmarks/scale_data.py says how, and the run saves their covariance spectrum and
nearest-neighbour similarities beside the real ones); `mixture` is the earlier synthetic two-level
Gaussian mixture (Zipf topics x Zipf sub-topics, normalised). Either is written chunk by chunk to an
embeddings parquet (the pipeline's input format) under --work and reused by later runs.

Stages, each timed with its peak RSS (psutil sampling every 20 ms in the process; each catalog size
runs in its own fresh subprocess, so sizes never share memory): read the embeddings parquet, fit the
tokenizer with the default configuration (which sizes the code space from the catalog and fits on a
seeded sample: QuantizerConfig.levels_up_to_items, items_growth_per_level and fit_sample), SID codes for all items
(encode), assign_sids (dedup), the distribution report, the distribution gate, and as the pipeline
does (tasks.pipeline.build_sids) when it fails: adaptive pruning (rqsid.prune.choose_k) and the gate
again; then the trie build and writing the SID parquet. An index is published only when the last gate
passed. The re-index total is the stages' sum; the growth column is 1M / 100k.

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

from common import RESULTS, Stages, header, load, log, md_table, new_result, write_result

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


def reindex(embeddings: Path, out_dir: Path, fit_sample: int | None, method: str, epochs: int | None, threads: int | None,
            real_gates: bool, tokenizer_dir: Path | None = None) -> dict[str, Any]:
    import torch

    from rqsid.config import GateConfig, PruneConfig, QuantizerConfig
    from rqsid.embed import read_embeddings
    from rqsid.metrics import table_report
    from rqsid.prune import choose_k
    from rqsid.quantize import fit_sized, load_tokenizer
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
        if fit_sample is not None:
            overrides["fit_sample"] = fit_sample
        with stages("fit (sample)") as row:
            # as the pipeline fits: the code space sized from n, a level added while collisions exceed the gate's bound
            tok = fit_sized(QuantizerConfig(**overrides), X, GateConfig().max_collision_rate, progress=False)
            row["items"] = tok.code_space["fit_items"]
            row["epochs_run"] = sum(1 for h in tok.history if h.get("phase") == "train") or None
        tok.save(out_dir / f"tokenizer-{n}")
    with stages("encode (SID codes)"):
        codes = tok.encode(X)
    with stages("assign SIDs (dedup)"):
        table = assign_sids(ids, codes, tok.codebook_sizes)
    with stages("report"):
        report = table_report(table)
    gate_name = "gate" + (" (GX)" if real_gates else " (numpy equivalent)")
    with stages(gate_name) as row:
        row["passed"] = gate_before = run_gates(ids, X, report, real_gates)
    health = fit_health(tok, X)  # outside the timed stages: a check of the benchmark, not a pipeline step
    del X
    prune = PruneConfig()
    pruned, gate_after = None, None
    if not gate_before:  # as tasks.pipeline.build_sids: prune only when the gate fails, then gate again
        with stages("prune (choose_k)") as row:
            pruned = choose_k(table, prune.gini_threshold, prune.max_collision_rate, prune.level, prune.max_k)
            row["k"] = pruned.k
        with stages(gate_name + " after pruning") as row:
            row["passed"] = gate_after = run_gates(ids, None, pruned.report, real_gates)
        table = pruned.table
    with stages("trie build") as row:
        trie = SidTrie.build(table.token_matrix(), table.vocab_size)
        row["nodes"], row["trie_mb"] = trie.n_nodes, round(trie.nbytes / 2**20, 1)
    with stages("write SIDs"):
        write_sids(out_dir / f"sids-{n}.parquet", table)
    stages.close()
    layers = report["layers"]
    published = gate_before or bool(gate_after)
    final = pruned.report if pruned is not None else report
    return {"n_items": n, "stages": stages.rows, "total_s": round(sum(r["seconds"] for r in stages.rows), 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in stages.rows), 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "code_space": tok.code_space, "level_sizes": list(tok.codebook_sizes),
            "layer_gini": [layer["gini"] for layer in layers], "max_share": [layer["max_share"] for layer in layers],
            "layer2_gini": layers[1]["gini"], "collision_rate": report["collision_rate"], "gate_before": gate_before,
            "k": pruned.k if pruned else 0, "dropped": bool(pruned and pruned.dropped), "gate_after": gate_after,
            "published": published, "published_layer2_gini": final["layers"][1]["gini"],
            "published_collision_rate": final["collision_rate"],
            "utilisation": [layer["utilisation"] for layer in layers], "gate_config": GateConfig().model_dump(), **health}


HEALTH_SAMPLE = 20_000


def fit_health(tok, X: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Whether the fitted network reconstructs anything: its error on a sample of the items relative to the
    error of predicting their mean (near 1: a dead network whose codes partition nothing useful, as the
    session-4 1M run was), and how many epochs its rollback guard discarded."""
    rows = np.random.default_rng(seed).choice(len(X), min(HEALTH_SAMPLE, len(X)), replace=False)
    sample = np.asarray(X[np.sort(rows)], dtype=np.float32)
    mean_error = float(((sample - sample.mean(0)) ** 2).sum(1).mean())
    return {"recon_vs_mean": tok.reconstruction_error(sample) / mean_error,
            "rolled_back_epochs": sum(1 for h in tok.history if h.get("rolled_back"))}


def run_gates(ids: np.ndarray, X: np.ndarray | None, report: dict, real: bool) -> bool:
    """The pipeline's gates: the real GX suites, or their numpy equivalent (same checks and bounds).
    X None: the distribution gate only (the embeddings were checked before pruning)."""
    from rqsid.config import GateConfig

    gate = GateConfig()
    if real:
        from tasks.gates import check_distribution, check_embeddings

        return (X is None or check_embeddings(ids, X, DIM).success) and check_distribution(report, gate).success
    embeddings_ok = True
    if X is not None:
        # row norms without an (n, d) temporary; a NaN/inf anywhere in a row makes its norm non-finite
        norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
        embeddings_ok = (len(set(ids)) == len(ids) and X.shape[1] == DIM and bool(np.isfinite(norms).all())
                         and bool(((norms >= 1e-3) & (norms <= 1e3)).all()))
    present = {layer["level"]: layer for layer in report["layers"] if layer["n_items"]}  # a dropped layer is not checked
    distribution_ok = ((2 not in present or present[2]["gini"] <= gate.max_layer2_gini)
                       and report["collision_rate"] <= gate.max_collision_rate
                       and all(layer["utilisation"] >= gate.min_utilisation for layer in present.values()))
    return bool(embeddings_ok and distribution_ok)


# ---------------------------------------------------------------- driver


def prepare_realistic(sizes: list[int], args) -> dict[str, Any]:
    """Write the mixed-and-perturbed catalogs; the calibration and the spectrum / similarity plot."""
    from scale_data import RealPool, calibrate, nn_cosine_to, spectrum, spectrum_plot, write_realistic

    pool = RealPool(args.real_embeddings)
    calibration_file = args.work / "realistic-calibration.json"
    if calibration_file.exists():
        calibration = json.loads(calibration_file.read_text())
    else:
        calibration = calibrate(pool)
        calibration_file.write_text(json.dumps(calibration, indent=1))
    noise = calibration["noise_max"], calibration["noise_power"]
    log(f"realistic embeddings: noise s_max {noise[0]}, power {noise[1]} (real nearest-neighbour cosine percentiles "
        f"{calibration['real_quantiles']})")
    paths = {n: write_realistic(args.work / f"realistic-{n}.parquet", n, pool, *noise) for n in sizes}
    from rqsid.embed import read_embeddings

    rng = np.random.default_rng(2)
    n_real = pool.X.shape[0]
    same_size = pool.draw(n_real, np.random.default_rng(1), *noise)
    largest = max(sizes)
    _, big = read_embeddings(paths[largest])
    sample = big[np.sort(rng.choice(largest, min(largest, 100_000), replace=False))]
    queries = 2000
    nn = {f"real pool ({n_real:,})": nn_cosine_to(pool.X[:queries], pool.X, exclude_self=True),
          f"synthetic, pool-sized ({n_real:,})": nn_cosine_to(same_size[:queries], same_size, exclude_self=True),
          f"synthetic ({largest:,})": nn_cosine_to(big[:queries], big, exclude_self=True)}
    del big
    plot = spectrum_plot(pool, {f"synthetic ({largest:,}, 100k sample)": sample, f"synthetic, pool-sized ({n_real:,})": same_size},
                         args.results / f"scale{args.tag}_embeddings.png", nn)
    real_spec, synth_spec = spectrum(pool.X), spectrum(sample)
    top = lambda v, k: float(v[:k].sum() / v.sum())  # noqa: E731
    return {"paths": {str(n): str(p) for n, p in paths.items()}, "calibration": calibration, "pool_sizes": pool.sizes,
            "plot": str(plot.relative_to(args.results.parent.parent)) if plot.is_relative_to(args.results.parent.parent) else str(plot),
            "variance_share_top": {str(k): {"real": top(real_spec, k), "synthetic": top(synth_spec, k)} for k in (10, 32, 128)},
            "total_variance": {"real": float(real_spec.sum()), "synthetic": float(synth_spec.sum())},
            "nn_cos_quantiles": {label: np.quantile(v, [0.1, 0.5, 0.9]).round(4).tolist() for label, v in nn.items()}}


def run_size(n: int, args, path: Path) -> dict[str, Any]:
    out = args.work / f"result-{n}.json"
    cmd = [sys.executable, __file__, "--child", str(path), "--child-out", str(out),
           "--method", args.method, "--work", str(args.work)]
    cmd += ["--fit-sample", str(args.fit_sample)] if args.fit_sample is not None else []
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
    large_stages = {row["stage"]: row for row in large["stages"]}
    for a in small["stages"]:
        b = large_stages.get(a["stage"])  # pruning stages run only where the gate failed
        if b is None:
            continue
        rows.append({"stage": a["stage"], "s_small": a["seconds"], "s_large": b["seconds"],
                     "time_growth": b["seconds"] / max(a["seconds"], 1e-9), "mb_small": a["peak_rss_mb"],
                     "mb_large": b["peak_rss_mb"], "mem_growth": b["peak_rss_mb"] / max(a["peak_rss_mb"], 1e-9)})
    rows.append({"stage": "**re-index total**", "s_small": small["total_s"], "s_large": large["total_s"],
                 "time_growth": large["total_s"] / small["total_s"], "mb_small": small["peak_rss_mb"],
                 "mb_large": large["peak_rss_mb"], "mem_growth": large["peak_rss_mb"] / small["peak_rss_mb"]})
    return rows


def _num(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _yes(value) -> str:
    return "-" if value is None else ("passed" if value else "FAILED")


def published_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size: the code space the rule chose, the gate before and after pruning, and what was published."""
    rows = []
    for res in result["sizes"]:
        space = res.get("code_space") or {}
        rows.append({"items": f"{res['n_items']:,}", "code space": " x ".join(map(str, res["level_sizes"])),
                     "fit_items": space.get("fit_items"),
                     "tries": ", ".join(f"{t['levels']}: {t['collision_rate']:.3f}" for t in space.get("tries", [])) or "-",
                     "gini": " / ".join(f"{g:.3f}" for g in res["layer_gini"]), "max_share": max(res["max_share"]),
                     "collisions": res["collision_rate"], "gate": _yes(res["gate_before"]),
                     "pruned": ("-" if res["gate_before"] else f"K={res['k']}" + (", layer 2 dropped" if res["dropped"] else "")),
                     "gate_after": _yes(res["gate_after"]), "published": "yes" if res["published"] else "NO",
                     "pub_gini": res["published_layer2_gini"], "pub_collisions": res["published_collision_rate"],
                     "recon": res.get("recon_vs_mean"), "rolled_back": res.get("rolled_back_epochs"),
                     "total_s": res["total_s"], "peak_gb": res["peak_rss_mb"] / 1024})
    return rows


PUBLISHED_COLUMNS = [("items", "items", ""), ("code space (rule)", "code space", ""),
                     ("fitted on", "fit_items", ",d"), ("error / mean's", "recon", ".3f"),
                     ("epochs rolled back", "rolled_back", ""), ("levels tried: collision rate", "tries", ""),
                     ("Gini L1 / L2 / ...", "gini", ""), ("max share", "max_share", ".3f"),
                     ("collision rate", "collisions", ".4f"), ("gate", "gate", ""), ("pruning", "pruned", ""),
                     ("gate after pruning", "gate_after", ""), ("published", "published", ""),
                     ("published L2 Gini", "pub_gini", ".3f"), ("published collisions", "pub_collisions", ".4f"),
                     ("re-index s", "total_s", ".0f"), ("peak GB", "peak_gb", ".2f")]


def markdown(result: dict[str, Any]) -> str:
    sizes = [r["n_items"] for r in result["sizes"]]
    fitted = (f"tokenizer {result['method']} with the default configuration"
              + (f", fitted on at most {result['fit_sample']:,} items" if result["fit_sample"] else "")
              + (f" ({result['epochs']} epochs max)" if result["epochs"] else ""))
    data = result.get("data", "mixture")
    described = {"realistic": "Realistic 384-d embeddings: the real Beauty, Scientific and Sports item embeddings mixed and "
                              "perturbed (benchmarks/scale_data.py)",
                 "mixture": "Synthetic skewed 384-d embeddings (Zipf topics x Zipf sub-topics, normalised)"}[data]
    gate = result["sizes"][0]["gate_config"]
    notes = [described + ", " + ("a saved tokenizer" if result.get("tokenizer") else fitted)
             + f", torch threads {result['threads'] or 'default'}. Peak RSS sampled per stage (psutil, 20 ms) in a "
             "fresh process per size. Target: 1M re-index under 600 s and 6 GB peak, and a published (gated) index: "
             f"layer-2 Gini <= {gate['max_layer2_gini']}, collision rate <= {gate['max_collision_rate']}, every layer "
             f"using >= {gate['min_utilisation']:.0%} of its codes."]
    if result.get("tokenizer"):
        notes.append(f"No refit: the tokenizer saved at {result['tokenizer']} is loaded (the stable re-index path).")
    real = result.get("realistic")
    if real:
        cal = real["calibration"]
        grid = ", ".join(f"({r['noise_max']}, {r['noise_power']}): {' / '.join(f'{q:.3f}' for q in r['quantiles'])}"
                         for r in cal["grid"])
        shares = "; ".join(f"top {k} components {v['real']:.1%} real vs {v['synthetic']:.1%} synthetic"
                           for k, v in real["variance_share_top"].items())
        nn = "; ".join(f"{label} {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}" for label, q in real["nn_cos_quantiles"].items())
        notes += [f"How the embeddings were made: each item = normalise(a + u (b - a) + s e), a a real item of the pool "
                  f"({', '.join(f'{k} {v:,}' for k, v in real['pool_sizes'].items())}), b one of its 10 nearest neighbours in "
                  "its own catalog, u ~ U(0, 1), e ~ N(0, covariance of the differences between real nearest neighbours), "
                  f"s = s_max v^p with v ~ U(0, 1) per item. (s_max, p) = ({cal['noise_max']}, {cal['noise_power']}), chosen "
                  "so that a pool-sized sample has the real pool's nearest-neighbour cosine percentiles (10th / 50th / 90th "
                  f"{' / '.join(f'{q:.3f}' for q in cal['real_quantiles'])}); grid (s_max, p): percentiles = {grid}.",
                  f"Spectrum: {shares}; total variance {real['total_variance']['real']:.3f} real vs "
                  f"{real['total_variance']['synthetic']:.3f} synthetic. Nearest-neighbour cosine (10th / 50th / 90th "
                  f"percentile, 2,000 items): {nn}. Plot: `{real['plot']}`."]
    lines = header("Scale: re-index from precomputed embeddings", result, notes)
    lines += ["## What was published", ""] + md_table(published_rows(result), PUBLISHED_COLUMNS) + [""]
    for res in result["sizes"]:
        lines += [f"## {res['n_items']:,} items: {res['total_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"(ru_maxrss {res['ru_maxrss_mb']:.0f} MB)", ""]
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
        lines.append(f"- {res['n_items']:,} items: re-index {res['total_s']:.0f} s with the tokenizer fit ({fit_s:.0f} s, on a "
                     f"sample of at most fit_sample items), {res['total_s'] - fit_s:.0f} s without it "
                     "(the stable re-index path, which reuses the published tokenizer while drift stays in bounds).")
    lines.append("")
    lines.append(f"Largest catalog ({big['n_items']:,}): {big['total_s']:.0f} s (target {TARGET_S} s: "
                 f"{'met' if big['total_s'] < TARGET_S else 'MISSED'}), peak {big['peak_rss_mb'] / 1024:.2f} GB "
                 f"(target 6 GB: {'met' if big['peak_rss_mb'] < TARGET_MB else 'MISSED'}); "
                 + "; ".join(f"{r['n_items']:,}: {'published' if r['published'] else 'NOTHING PUBLISHED (gate failed)'}"
                             for r in result["sizes"]) + ".")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="20k and 100k items, 10-epoch fit on 5k")
    parser.add_argument("--data", choices=["realistic", "mixture"], default="realistic")
    parser.add_argument("--real-embeddings", type=Path, default=Path("/work/scratch/emb"),
                        help="folder with beauty/scientific/sports.parquet (rqsid embed) for --data realistic")
    parser.add_argument("--fit-sample", type=int, default=None, help="default: QuantizerConfig.fit_sample")
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
        args.sizes, args.fit_sample, args.epochs = [20_000, 100_000], min(args.fit_sample or 5000, 5000), args.epochs or 10
    args.work.mkdir(parents=True, exist_ok=True)
    args.results = RESULTS
    start = time.perf_counter()
    realistic = prepare_realistic(args.sizes, args) if args.data == "realistic" else None
    paths = ({n: Path(realistic["paths"][str(n)]) for n in args.sizes} if realistic
             else {n: write_synthetic(args.work / f"synthetic-{n}.parquet", n) for n in args.sizes})
    load_at_start = load()
    sizes = [run_size(n, args, paths[n]) for n in args.sizes]
    result = new_result(tokenizer=str(args.tokenizer) if args.tokenizer else None, method=args.method, fit_sample=args.fit_sample,
                        epochs=args.epochs, threads=args.threads, data=args.data, realistic=realistic, load_at_reindex=load_at_start,
                        real_gates=args.real_gates, quick=args.quick, sizes=sizes, growth=growth(sizes),
                        wall_s=round(time.perf_counter() - start, 1))
    write_result("scale" + ("_quick" if args.quick else "") + args.tag, result, markdown(result))


if __name__ == "__main__":
    main()
