"""Dask embedding on a real LocalCluster against the single-process embedder, on real Scientific items."""

from __future__ import annotations

import socket
import time

import numpy as np
import pyarrow as pa
import pytest

from rqsid import RqsidError
from rqsid.catalog import write_catalog
from rqsid.config import EmbedConfig
from rqsid.embed import TextEmbedder, item_text, read_embeddings
from synthetic_tables import shop
from tasks.dask_embed import dask_client, embed_catalog_dask

N_ITEMS = 160


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    catalog, _ = shop(n_items=600)
    # Every third item: a spread of short and long texts across the catalog, not just its head.
    subset = catalog.take(np.arange(0, catalog.num_rows, 3)[:N_ITEMS])
    return subset, write_catalog(subset, tmp_path_factory.mktemp("dask") / "catalog.parquet")


def test_two_workers_match_the_single_process_embedder(small_catalog, tmp_path):
    table, path = small_catalog
    config = EmbedConfig(batch_size=32)
    out = tmp_path / "embeddings.parquet"
    with dask_client(n_workers=2) as client:
        stats = embed_catalog_dask(path, out, config, client, partition_rows=50, progress=False)
        # One torch thread per worker, so the two processes do not fight over the cores.
        assert set(client.run(lambda: __import__("torch").get_num_threads()).values()) == {1}
    assert stats["n_items"] == N_ITEMS
    assert stats["n_partitions"] == 4  # 160 rows / 50 per partition, rounded up
    assert stats["n_workers"] == 2
    assert stats["items_per_s"] == pytest.approx(N_ITEMS / stats["seconds"])

    ids, X = read_embeddings(out)
    assert list(ids) == table.column("item_id").to_pylist()  # catalog order
    expected = TextEmbedder(batch_size=32, num_threads=1).embed(item_text(table), progress=False)
    assert X.shape == expected.shape == (N_ITEMS, 384)
    np.testing.assert_allclose(X, expected, atol=2e-5)


def test_unreachable_scheduler_is_a_clear_error():
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(RqsidError, match=f"no Dask scheduler answered at tcp://127.0.0.1:{port}"), \
            dask_client(f"tcp://127.0.0.1:{port}", timeout_s=2):
        pass
    assert time.perf_counter() - start < 30


def test_missing_columns_are_a_user_error(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "ids_only.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"]}), path)
    with pytest.raises(RqsidError, match="lacks the columns title, brand"):
        embed_catalog_dask(path, tmp_path / "out.parquet", EmbedConfig(), client=None)
