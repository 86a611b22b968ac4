"""Dask adapter: embed a catalog in parallel, the text model loaded once per worker process.

Each worker keeps one torch thread (more threads per process on a 2-core box made it 4.5x
slower); parallelism comes from worker processes. Workers read their rows from the catalog file
themselves; only the vectors travel back, and the driver writes them in the catalog's order.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rqsid import RqsidError
from rqsid.config import EmbedConfig

TEXT_COLUMNS = ["item_id", "title", "brand", "categories", "description", "extra"]
_OUT_META = pd.DataFrame({"item_id": pd.Series(dtype=object), "vector": pd.Series(dtype=object)})

# Offline, quiet workers: they inherit the driver's environment when the cluster starts.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("DASK_LOGGING__DISTRIBUTED", "warning")):
    os.environ.setdefault(_key, _value)


@contextmanager
def dask_client(address: str | None = None, n_workers: int = 2, timeout_s: float = 10.0) -> Iterator[Any]:
    """A distributed Client: to the scheduler at `address`, else a LocalCluster of single-threaded processes."""
    import dask
    from distributed import Client, LocalCluster

    if address:
        try:
            client = Client(address, timeout=timeout_s)
        except (OSError, TimeoutError) as err:
            raise RqsidError(f"no Dask scheduler answered at {address} within {timeout_s:g} s ({type(err).__name__})") from None
        try:
            yield client
        finally:
            client.close()
        return
    # The scheduler always serves HTTP (health, metrics); a random local port avoids fighting over 8787.
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (memory goes back to the OS
    # sooner); for the text model that costs 13-15 % of throughput (one thread, 600 Scientific items:
    # 22.5-23.3 vs 26.6 items/s), so our workers keep glibc's default.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0", host="127.0.0.1")
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


# ---------------------------------------------------------------- on the workers

_EMBEDDERS: dict[str, Any] = {}  # one model per worker process, reused across partitions and runs


def _embedder(config: EmbedConfig):
    key = config.model_dump_json()
    if key not in _EMBEDDERS:
        from rqsid.embed import TextEmbedder

        _EMBEDDERS[key] = TextEmbedder.from_config(config, num_threads=1)
    return _EMBEDDERS[key]


def _embed_partition(part: pd.DataFrame, config: EmbedConfig) -> pd.DataFrame:
    from rqsid.embed import item_text

    if part.empty:
        return _OUT_META.copy()
    table = pa.Table.from_pandas(part[TEXT_COLUMNS], preserve_index=False)
    X = _embedder(config).embed(item_text(table, max_chars=config.max_chars), progress=False)
    return pd.DataFrame({"item_id": part["item_id"].astype(object).to_numpy(), "vector": list(X)},
                        index=part.index)


# ---------------------------------------------------------------- on the driver


def _resolved(config: EmbedConfig) -> EmbedConfig:
    """The config the workers get: the default model's folder resolved here, so every worker loads the same."""
    from rqsid.embed import default_model_path

    return config.model_copy(update={"model_path": config.model_path or default_model_path()})


def _partitions(catalog_path: Path, partition_rows: int):
    import dask.dataframe as dd

    n_rows = pq.ParquetFile(catalog_path).metadata.num_rows
    if n_rows == 0:
        raise RqsidError(f"catalog {catalog_path} has zero rows")
    frame = dd.read_parquet(str(catalog_path), columns=TEXT_COLUMNS)
    return frame.repartition(npartitions=max(1, math.ceil(n_rows / partition_rows))), n_rows


def embed_catalog_dask(catalog_path: str | Path, out_path: str | Path, embed_config: EmbedConfig, client,
                       partition_rows: int = 2000, progress: bool = True) -> dict[str, Any]:
    """Embed a catalog parquet on a Dask cluster; write the embeddings parquet in catalog order; return stats."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from rqsid.embed import write_embeddings

    catalog_path = Path(catalog_path)
    if not catalog_path.exists():
        raise RqsidError(f"catalog {catalog_path} does not exist")
    missing = [c for c in TEXT_COLUMNS if c not in pq.read_schema(catalog_path).names]
    if missing:
        raise RqsidError(f"catalog {catalog_path} lacks the columns {', '.join(missing)}")
    start = time.perf_counter()
    frame, n_rows = _partitions(catalog_path, partition_rows)
    vectors = frame.map_partitions(_embed_partition, _resolved(embed_config), meta=_OUT_META)
    futures = client.compute(vectors.to_delayed())
    done: dict[str, pd.DataFrame] = {}
    with tqdm(total=n_rows, unit="item", desc="embedding (dask)", disable=not progress) as bar:
        for future, part in as_completed(futures, with_results=True):
            done[future.key] = part
            bar.update(len(part))
    parts = [done[future.key] for future in futures]  # partition order = catalog order
    ids = np.concatenate([p["item_id"].to_numpy(dtype=object) for p in parts])
    X = np.stack([v for p in parts for v in p["vector"]]).astype(np.float32, copy=False)
    write_embeddings(out_path, ids, X)
    seconds = time.perf_counter() - start
    return {
        "n_items": int(len(ids)),
        "seconds": seconds,
        "items_per_s": len(ids) / seconds,
        "n_partitions": int(frame.npartitions),
        "n_workers": len(client.nthreads()),
    }
