"""Scale-out: embedding and SID assignment on a Dask cluster started separately, by address.

A `dask scheduler` and a `dask worker` (--nworkers 2, 1 thread each) run as separate processes on
127.0.0.1; the driver connects with tasks.dask_embed.dask_client(address=...). Checked against the
local run:
- embedding: embed_catalog_dask on the remote cluster vs on a LocalCluster (same settings) vs one
  plain sentence-transformers process, on the first --items real Scientific items;
- SID assignment: a tokenizer fitted locally and saved; each worker loads it and encodes row groups
  of the embeddings parquet it reads itself (only codes travel back); the driver assigns SIDs
  (dedup needs the global view) and compares them with the local encode: codes must be identical.
  Run on the real Scientific embeddings (all items) and on the synthetic 100k catalog of benchmarks/scale.py.

    .venv/bin/python benchmarks/scaleout.py
    .venv/bin/python benchmarks/scaleout.py --quick
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from common import header, log, md_table, new_result, write_result

from tasks.services import free_port

VENV_BIN = Path(sys.executable).parent
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "OMP_NUM_THREADS": "1", "DASK_LOGGING__DISTRIBUTED": "warning"}


@contextmanager
def separate_cluster(workers: int, logs: Path) -> Iterator[str]:
    """`dask scheduler` + `dask worker` processes on 127.0.0.1; yields the scheduler address; stops both."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **WORKER_ENV}
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        procs.append(subprocess.Popen([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], env=env, stdout=open(logs / "scheduler.log", "w"),  # noqa: SIM115 (open while it runs)
                                      stderr=subprocess.STDOUT, start_new_session=True))
        procs.append(subprocess.Popen([str(VENV_BIN / "dask"), "worker", address, "--nworkers", str(workers),
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                      stdout=open(logs / "worker.log", "w"),  # noqa: SIM115 (open while it runs)
                                      stderr=subprocess.STDOUT, start_new_session=True))
        yield address
    finally:
        for proc in reversed(procs):  # each in its own session: signal its group, then wait
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_for_workers(client, n: int, timeout_s: float = 120) -> None:
    client.wait_for_workers(n, timeout=timeout_s)


# ---------------------------------------------------------------- SID assignment on the workers


def encode_row_group(embeddings: str, group: int, tokenizer_dir: str) -> np.ndarray:
    """On a worker: read one row group of the embeddings parquet, encode it with the saved tokenizer."""
    import torch

    from rqsid.quantize import load_tokenizer

    torch.set_num_threads(1)
    table = pq.ParquetFile(embeddings).read_row_group(group, columns=["vector"])
    vectors = table.column("vector").combine_chunks()
    X = vectors.flatten().to_numpy().reshape(len(vectors), -1)
    return load_tokenizer(tokenizer_dir).encode(X)


def regroup(src: Path, dst: Path, rows: int) -> Path:
    """The embeddings parquet with row groups of `rows` items: the unit of work of the workers."""
    pq.write_table(pq.read_table(src), dst, row_group_size=rows)
    return dst


def sids_remote_vs_local(client, embeddings: Path, work: Path, group_rows: int, label: str) -> dict[str, Any]:
    import torch

    from rqsid.config import QuantizerConfig
    from rqsid.embed import read_embeddings
    from rqsid.quantize import make_tokenizer
    from rqsid.sids import assign_sids

    torch.set_num_threads(1)
    ids, X = read_embeddings(embeddings)
    fit_rows = np.sort(np.random.default_rng(0).choice(len(X), min(len(X), 10_000), replace=False))
    tok = make_tokenizer(QuantizerConfig(method="rkmeans", threads=1)).fit(X[fit_rows], progress=False)
    tok_dir = tok.save(work / f"tokenizer-{label}")
    start = time.perf_counter()
    local_table = assign_sids(ids, tok.encode(X), tok.codebook_sizes)
    local_s = time.perf_counter() - start
    grouped = regroup(embeddings, work / f"grouped-{label}.parquet", group_rows)
    groups = pq.ParquetFile(grouped).num_row_groups
    start = time.perf_counter()
    futures = client.map(encode_row_group, [str(grouped)] * groups, range(groups), [str(tok_dir)] * groups, pure=False)
    codes = np.concatenate(client.gather(futures))
    remote_table = assign_sids(ids, codes, tok.codebook_sizes)
    remote_s = time.perf_counter() - start
    identical = bool(np.array_equal(remote_table.codes, local_table.codes)
                     and np.array_equal(remote_table.dedup, local_table.dedup))
    row = {"what": f"SID assignment, {label}", "n_items": len(ids), "local_s": local_s, "remote_s": remote_s,
           "local_items_per_s": len(ids) / local_s, "remote_items_per_s": len(ids) / remote_s,
           "remote_vs_local": local_s / remote_s, "tasks": groups, "identical": identical, "max_abs_diff": None}
    log(f"{row['what']}: local {local_s:.2f} s, remote {remote_s:.2f} s ({groups} tasks), identical={identical}")
    return row


# ---------------------------------------------------------------- embedding


def embedding_remote_vs_local(address: str, workers: int, items: int, partition_rows: int, work: Path) -> tuple[list, Path]:
    from rqsid.catalog import write_catalog
    from rqsid.config import EmbedConfig
    from rqsid.embed import TextEmbedder, item_text, read_embeddings
    from rqsid.home import shared_data_dir
    from rqsid.importers import import_scientific
    from tasks.dask_embed import dask_client, embed_catalog_dask

    catalog, _ = import_scientific(shared_data_dir() / "amazon-scientific-2018")
    table = catalog.slice(0, items)
    catalog_path = write_catalog(table, work / "catalog.parquet")
    config = EmbedConfig()
    runs = {}
    with dask_client(n_workers=workers) as client:
        runs["local"] = embed_catalog_dask(catalog_path, work / "emb-local.parquet", config, client, partition_rows,
                                           progress=False)
    with dask_client(address=address, timeout_s=60) as client:
        wait_for_workers(client, workers)
        runs["remote"] = embed_catalog_dask(catalog_path, work / "emb-remote.parquet", config, client, partition_rows,
                                            progress=False)
    embedder = TextEmbedder(batch_size=config.batch_size, max_seq_length=config.max_seq_length, num_threads=1)
    start = time.perf_counter()
    X_plain = embedder.embed(item_text(table, config.max_chars), progress=False)
    plain_s = time.perf_counter() - start
    ids_l, X_local = read_embeddings(work / "emb-local.parquet")
    ids_r, X_remote = read_embeddings(work / "emb-remote.parquet")
    same_ids = bool(np.array_equal(ids_l, ids_r))
    row = {"what": "embedding (Dask, 2 workers)", "n_items": items, "local_s": runs["local"]["seconds"],
           "remote_s": runs["remote"]["seconds"], "local_items_per_s": runs["local"]["items_per_s"],
           "remote_items_per_s": runs["remote"]["items_per_s"],
           "remote_vs_local": runs["remote"]["items_per_s"] / runs["local"]["items_per_s"],
           "tasks": runs["remote"]["n_partitions"], "identical": same_ids and bool(np.array_equal(X_local, X_remote)),
           "max_abs_diff": float(np.abs(X_local - X_remote).max()), "plain_1thread_items_per_s": items / plain_s,
           "plain_max_abs_diff": float(np.abs(X_remote - X_plain).max())}
    log(f"embedding: local {row['local_items_per_s']:.1f} items/s, remote {row['remote_items_per_s']:.1f} items/s, "
        f"identical={row['identical']} (max diff {row['max_abs_diff']:.1e}; vs plain process {row['plain_max_abs_diff']:.1e})")
    return [row], work / "emb-remote.parquet"


def markdown(result: dict[str, Any]) -> str:
    emb = result["rows"][0]
    notes = ["Separate processes: `dask scheduler --host 127.0.0.1` and "
             f"`dask worker --nworkers {result['workers']} --nthreads 1`, "
             "reached by address through tasks.dask_embed.dask_client(address=...); 'local' = the same work on a "
             "LocalCluster (embedding) or in the driver process (SID codes, 1 torch thread). SID codes: residual k-means "
             "(3 x 256) fitted locally on up to 10k items, saved, loaded by each task on the workers.",
             f"Embedding vs one plain process (1 torch thread): {emb['plain_1thread_items_per_s']:.1f} items/s, max |diff| "
             f"{emb['plain_max_abs_diff']:.1e} (float noise of a different batch composition)."]
    lines = header("Scale-out: a separately started Dask cluster, by address", result, notes)
    lines += md_table(result["rows"], [("what", "what", ""), ("items", "n_items", "d"), ("tasks", "tasks", "d"),
                                       ("local s", "local_s", ".2f"), ("remote s", "remote_s", ".2f"),
                                       ("local items/s", "local_items_per_s", ".1f"),
                                       ("remote items/s", "remote_items_per_s", ".1f"),
                                       ("remote / local speed", "remote_vs_local", ".2f"),
                                       ("identical to local", "identical", ""),
                                       ("max abs diff", "max_abs_diff", ".1e")])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600, help="Scientific items to embed")
    parser.add_argument("--partition-rows", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--synthetic", type=Path, default=Path("/work/scratch/bench-scale/synthetic-100000.parquet"),
                        help="a large embeddings parquet for SID assignment (made by benchmarks/scale.py); skipped if absent")
    parser.add_argument("--sid-embeddings", type=Path, default=Path("/work/scratch/emb/scientific.parquet"),
                        help="real embeddings for SID assignment (default: the cached Scientific ones; else those just made)")
    parser.add_argument("--group-rows", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="150 items, no synthetic catalog")
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/bench-scaleout"))
    args = parser.parse_args()
    if args.quick:
        args.items, args.partition_rows, args.synthetic = 150, 50, None
    args.work.mkdir(parents=True, exist_ok=True)
    from tasks.dask_embed import dask_client

    with separate_cluster(args.workers, args.work / "logs") as address:
        log(f"scheduler at {address}")
        rows, emb_path = embedding_remote_vs_local(address, args.workers, args.items, args.partition_rows, args.work)
        with dask_client(address=address, timeout_s=60) as client:
            wait_for_workers(client, args.workers)
            sci = args.sid_embeddings if args.sid_embeddings.exists() else emb_path
            rows.append(sids_remote_vs_local(client, sci, args.work, 1000, "Scientific"))
            if args.synthetic and args.synthetic.exists():
                rows.append(sids_remote_vs_local(client, args.synthetic, args.work, args.group_rows, "synthetic"))
    result = new_result(workers=args.workers, quick=args.quick, rows=rows)
    write_result("scaleout" + ("_quick" if args.quick else ""), result, markdown(result))


if __name__ == "__main__":
    main()
