"""Dask embedding throughput: 1 worker vs 2 workers vs one plain process on real Scientific items.

    .venv/bin/python benchmarks/dask_embedding.py --items 2000 --partition-rows 250
    .venv/bin/python benchmarks/dask_embedding.py --quick

The plain sentence-transformers process runs twice, with 1 torch thread and with torch's default
(one per core); the ratio that matters is Dask with N single-threaded workers against the plain
process with N threads (equal cores), warm runs.

Both LocalClusters stay up and runs alternate: "cold" (workers import torch and load the model)
in one order, then "warm" (model cached per worker) in the reverse order. Worker CPU time is
recorded, so "cores used" shows how much of the machine each run actually got. Writes
benchmarks/results/dask_embedding.json and .md. The machine's load average is recorded with each
run because the cores may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path

import numpy as np
from common import command_line, machine, versions, write_result

from rqsid.catalog import write_catalog
from rqsid.config import EmbedConfig
from rqsid.embed import TextEmbedder, item_text, read_embeddings
from rqsid.home import repo_root, shared_data_dir
from rqsid.importers import import_scientific
from tasks.dask_embed import dask_client, embed_catalog_dask


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def single_process(table, config: EmbedConfig, threads: int | None = None) -> dict:
    start = time.perf_counter()
    embedder = TextEmbedder(batch_size=config.batch_size, max_seq_length=config.max_seq_length, num_threads=threads)
    loaded = time.perf_counter()
    load, cpu = _load(), time.process_time()
    X = embedder.embed(item_text(table, config.max_chars), progress=False)
    end, cpu = time.perf_counter(), time.process_time() - cpu
    label = f"{threads} torch thread(s)" if threads else f"torch default threads ({torch_default_threads()})"
    return {"setting": f"single process (no Dask, {label})", "threads": threads or torch_default_threads(), "load_before": load,
            "n_items": len(X),
            "seconds_total": end - start, "seconds_embed": end - loaded, "items_per_s": len(X) / (end - loaded),
            "worker_cpu_s": cpu, "cores_used": cpu / (end - loaded), "items_per_cpu_s": len(X) / cpu}, X


def torch_default_threads() -> int:
    import torch

    return torch.get_num_threads()


def equal_core_ratios(runs: list[dict]) -> list[dict]:
    """Warm Dask with N single-threaded workers / the plain process with N threads (same cores)."""
    plain = {r["threads"]: r for r in runs if "threads" in r}
    out = []
    for r in runs:
        if r.get("run") == "warm" and r["n_workers"] in plain:
            base = plain[r["n_workers"]]
            out.append({"cores": r["n_workers"], "dask_items_per_s": r["items_per_s"], "plain_items_per_s": base["items_per_s"],
                        "ratio": r["items_per_s"] / base["items_per_s"]})
    return out


def _worker_cpu_s(client) -> float:
    """CPU seconds used so far by all worker processes (every thread), to see the CPU share we got."""
    return float(sum(client.run(time.process_time).values()))


def dask_run(client, catalog_path: Path, out_dir: Path, run: str, partition_rows: int, config: EmbedConfig) -> dict:
    workers = len(client.nthreads())
    load, cpu = _load(), _worker_cpu_s(client)
    stats = embed_catalog_dask(catalog_path, out_dir / f"emb-{workers}.parquet", config, client,
                               partition_rows=partition_rows, progress=False)
    cpu = _worker_cpu_s(client) - cpu
    return {"setting": f"dask, {workers} worker(s)", "run": run, "load_before": load, "worker_cpu_s": cpu,
            "cores_used": cpu / stats["seconds"], "items_per_cpu_s": stats["n_items"] / cpu, **stats}


def dask_runs(catalog_path: Path, out_dir: Path, worker_counts: list[int], partition_rows: int,
              config: EmbedConfig) -> list[dict]:
    """Both clusters stay up; runs alternate (cold in one order, warm in the reverse) so that a change
    in the machine's load hits both settings alike."""
    rows = []
    with contextlib.ExitStack() as stack:
        clients = {n: stack.enter_context(dask_client(n_workers=n)) for n in worker_counts}
        for run, order in (("cold", worker_counts), ("warm", worker_counts[::-1])):
            rows += [dask_run(clients[n], catalog_path, out_dir, run, partition_rows, config) for n in order]
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Dask embedding: 1 worker vs 2 workers",
        "",
        f"{result['n_items']} real Amazon Scientific items (title, brand, categories, description; "
        f"max {result['config']['max_seq_length']} tokens), all-MiniLM-L6-v2 on CPU, "
        f"{result['cpu_count']} cores, partition_rows={result['partition_rows']}, {result['date']}.",
        "Reproduce: `" + result["command"] + "`" + (f"; load average at start {result['machine']['load_avg'][0]} "
        "(shared cores: compare ratios within one run)" if "machine" in result else ""),
        "",
        "| setting | run | items/s | seconds | partitions | cores used | items per CPU-s | load avg before |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["runs"]:
        lines.append(f"| {row['setting']} | {row.get('run', 'model loaded')} | {row['items_per_s']:.1f} | "
                     f"{row.get('seconds', row.get('seconds_embed')):.1f} | {row.get('n_partitions', '-')} | "
                     f"{row['cores_used']:.2f} | {row['items_per_cpu_s']:.1f} | {row['load_before']} |")
    lines += ["", "Dask (warm) vs the plain process at equal cores "
              "(N single-threaded workers vs N torch threads; target >= 0.9x):", ""]
    lines += [f"- {r['cores']} core(s): Dask {r['dask_items_per_s']:.1f} items/s vs plain {r['plain_items_per_s']:.1f} items/s = "
              f"**{r['ratio']:.2f}x**" for r in result.get("equal_core_ratios", [])]
    lines += ["", f"Warm speed-up of 2 workers over 1: **{result['speedup_2_over_1_warm']:.2f}x**; "
              f"max |difference| of the vectors vs the single process: {result['max_abs_diff']:.2e}.",
              "", conclusion(result), ""]
    return "\n".join(lines)


def conclusion(result: dict) -> str:
    """Why 2 workers did or did not beat 1: compare the cores each run actually got and the CPU cost per item."""
    warm = {r["n_workers"]: r for r in result["runs"] if r.get("run") == "warm"}
    if 1 not in warm or 2 not in warm:
        return ""
    one, two = warm[1], warm[2]
    text = (f"Cores used = worker CPU seconds / wall seconds. Warm: 1 worker got {one['cores_used']:.2f} cores, "
            f"2 workers {two['cores_used']:.2f}; CPU cost per item was {one['items_per_cpu_s']:.1f} vs "
            f"{two['items_per_cpu_s']:.1f} items per CPU-second. ")
    if two["cores_used"] < 1.5 * one["cores_used"]:
        text += ("The second worker brought no extra CPU (the cores were shared with other jobs, see the load "
                 "average), so 2 workers could not beat 1 here; with the same cost per item, an idle 2-core "
                 "machine should give about twice the throughput with 2 workers (an estimate, not measured here).")
    else:
        text += "The second worker got its own core, and throughput followed the cores used."
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--partition-rows", type=int, default=250)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="300 items in partitions of 75")
    parser.add_argument("--out", type=Path, default=repo_root() / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/bench-dask"))
    args = parser.parse_args()
    if args.quick:
        args.items, args.partition_rows = 300, 75

    catalog, _ = import_scientific(shared_data_dir() / "amazon-scientific-2018")
    table = catalog.slice(0, args.items)
    args.work.mkdir(parents=True, exist_ok=True)
    catalog_path = write_catalog(table, args.work / "catalog.parquet")
    config = EmbedConfig()

    baseline, X = single_process(table, config)
    runs = [baseline, single_process(table, config, threads=1)[0]]
    runs += dask_runs(catalog_path, args.work, args.workers, args.partition_rows, config)
    warm = {r["n_workers"]: r["items_per_s"] for r in runs if r.get("run") == "warm"}
    _, X2 = read_embeddings(args.work / f"emb-{max(args.workers)}.parquet")
    result = {
        "n_items": table.num_rows, "partition_rows": args.partition_rows, "config": config.model_dump(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command_line(), "machine": machine(), "versions": versions(),
        "runs": runs,
        "speedup_2_over_1_warm": warm.get(2, float("nan")) / warm.get(1, float("nan")),
        "max_abs_diff": float(np.abs(X - X2).max()),
    }
    result["equal_core_ratios"] = equal_core_ratios(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_result("dask_embedding" + ("_quick" if args.quick else ""), result, markdown(result), args.out)


if __name__ == "__main__":
    main()
