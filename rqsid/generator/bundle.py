"""A servable generator in one folder: the trained model, the SID table and trie it decodes with, the
item ids and titles, the per-user training cut-off, and where it came from. It loads without the
version store, MLflow or the catalog; the MLflow pyfunc model (tasks/serving.py) is this folder.

Layout:
    bundle.json            format, catalog name and version, the index it serves (`index_version`) and the
                           one it was trained on (`trained_index_version`), embeddings version, embed config
    model/                 the generator (rqsid.generator.train.save_generator; item text features inside)
    sids.parquet, trie.npz the SIDs of the served index and their prefix trie
    items.parquet          item_id, title (SID-table row order), for display
    trained_through.parquet  user_id, seq: each user's last interaction the model was trained on

A bundle serves the index it was trained on. `Bundle.serving(newer index)` gives the same model serving
a newer index that kept every one of its SIDs (the stable path; `retriever.bind`); otherwise it raises
and the bundle keeps serving its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rqsid import RqsidError
from rqsid.config import EmbedConfig
from rqsid.generator.data import SidVocab
from rqsid.generator.retriever import QueryEmbedder, Retriever, bind
from rqsid.generator.train import TrainedGenerator, load_generator, save_generator
from rqsid.jsonio import read_json, write_json
from rqsid.sids import SidTable, read_sids, write_sids
from rqsid.trie import SidTrie

BUNDLE_FORMAT = 1
REQUIRED = ("catalog_name", "index_version", "trained_index_version")


@dataclass
class Bundle:
    trained: TrainedGenerator
    table: SidTable
    titles: np.ndarray  # per SID-table row
    meta: dict[str, Any]
    trained_through: pa.Table | None = None
    _embedder: Any = field(default=None, repr=False)

    @property
    def index_version(self) -> str:
        """The index whose SIDs and trie this bundle decodes with."""
        return self.meta["index_version"]

    @property
    def trained_index_version(self) -> str:
        return self.meta["trained_index_version"]

    @property
    def rebound(self) -> bool:
        return self.index_version != self.trained_index_version

    def retriever(self, threads: int | None = None) -> Retriever:
        return Retriever(self.trained, self._query_embedder() if self.trained.cfg.use_query else None, threads)

    def selection(self) -> Bundle:
        """This bundle with the model chosen on validation (before a refit): what a contest on validation
        cases may judge."""
        return replace(self, trained=self.trained.selection())

    def title_of(self, item_ids: list[str]) -> list[str]:
        rows = self.trained.vocab.rows_of(np.asarray(item_ids, dtype=object))
        return [str(self.titles[r]) if r >= 0 else "" for r in rows]

    def serving(self, table: SidTable, index_version: str, item_features: np.ndarray | None,
                titles: np.ndarray) -> Bundle:
        """This model serving a newer index version whose SID table kept every SID the model knows (new items
        become recommendable before a retrain). Raises RqsidError when SIDs changed."""
        if index_version == self.index_version:
            return self
        trained = bind(self.trained, SidVocab.from_sid_table(table), item_features)
        return replace(self, trained=trained, table=table, titles=np.asarray(titles, dtype=object),
                       meta={**self.meta, "index_version": index_version, "n_items": len(table)}, _embedder=None)

    def _query_embedder(self) -> QueryEmbedder:
        """Queries embed with the catalog's text model (the embed config the index was built with), loaded once."""
        def embed(texts: list[str]) -> np.ndarray:
            if self._embedder is None:
                from rqsid.embed import TextEmbedder

                self._embedder = TextEmbedder.from_config(EmbedConfig.model_validate(self.meta.get("embed", {})))
            return self._embedder.embed(texts, progress=False)

        return embed


def make_bundle(trained: TrainedGenerator, table: SidTable, titles: np.ndarray, meta: dict[str, Any],
                trained_through: pa.Table | None = None) -> Bundle:
    missing = [key for key in REQUIRED if not meta.get(key)]
    if missing:
        raise RqsidError(f"bundle metadata lacks {', '.join(missing)}")
    if SidVocab.from_sid_table(table).fingerprint() != trained.vocab.fingerprint():
        raise RqsidError("the SID table is not the one the model decodes with")
    if len(titles) != len(table):
        raise RqsidError(f"{len(titles)} titles for {len(table)} items")
    return Bundle(trained, table, np.asarray(titles, dtype=object), {**meta, "n_items": len(table)}, trained_through)


def save_bundle(bundle: Bundle, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_generator(folder / "model", bundle.trained)
    write_sids(folder / "sids.parquet", bundle.table)
    bundle.trained.trie.save(folder / "trie.npz")
    ids = pa.array(np.asarray(bundle.table.item_ids).astype(str))
    pq.write_table(pa.table({"item_id": ids, "title": pa.array([str(t) for t in bundle.titles], pa.string())}),
                   folder / "items.parquet")
    if bundle.trained_through is not None:
        pq.write_table(bundle.trained_through, folder / "trained_through.parquet")
    write_json(folder / "bundle.json", {"format": BUNDLE_FORMAT, **bundle.meta})
    return folder


def is_bundle(folder: str | Path) -> bool:
    return (Path(folder) / "bundle.json").is_file()


def load_bundle(folder: str | Path) -> Bundle:
    folder = Path(folder)
    if not is_bundle(folder):
        raise RqsidError(f"{folder} is not a generator bundle (no bundle.json)")
    meta = read_json(folder / "bundle.json")
    if meta.pop("format", None) != BUNDLE_FORMAT:
        raise RqsidError(f"{folder}: bundle format is not {BUNDLE_FORMAT}")
    table = read_sids(folder / "sids.parquet")
    trained = load_generator(folder / "model", SidVocab.from_sid_table(table))
    trained.trie = _checked_trie(folder / "trie.npz", trained.vocab)
    titles = pq.read_table(folder / "items.parquet").column("title").to_numpy(zero_copy_only=False).astype(object)
    through = folder / "trained_through.parquet"
    return Bundle(trained, table, titles, meta, pq.read_table(through) if through.exists() else None)


def _checked_trie(path: Path, vocab: SidVocab) -> SidTrie:
    """The stored trie, after checking that every SID of the table leads to its own item (nothing else)."""
    trie = SidTrie.load(path)
    if not np.array_equal(trie.lookup(vocab.tokens), np.arange(vocab.n_items)):
        raise RqsidError(f"{path} does not map the bundle's SIDs to its items")
    return trie
