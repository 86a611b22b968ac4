"""Quantizers that turn item embeddings into semantic-ID codes.

`make_tokenizer(config)` builds the tokenizer that `config.method` names; `load_tokenizer(dir)`
reads back any tokenizer that `save(dir)` wrote.
"""

from __future__ import annotations

from pathlib import Path

from rqsid import RqsidError
from rqsid.config import QuantizerConfig
from rqsid.quantize.base import Tokenizer, read_saved
from rqsid.quantize.kmeans import KMeansResult, kmeans, kmeans_plus_plus, nearest_centroid
from rqsid.quantize.rkmeans import ResidualKMeans
from rqsid.quantize.rqvae import RQVAE, RQVAETokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {RQVAE.kind: RQVAE, ResidualKMeans.kind: ResidualKMeans}


def make_tokenizer(config: QuantizerConfig | None = None) -> Tokenizer:
    config = config or QuantizerConfig()
    return TOKENIZERS[config.method](config)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    meta, state = read_saved(directory)
    kind = meta.get("kind")
    if kind not in TOKENIZERS:
        raise RqsidError(f"{directory}: unknown tokenizer kind {kind!r} (known: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[kind]._from_saved(meta, state)


__all__ = [
    "KMeansResult",
    "RQVAE",
    "RQVAETokenizer",
    "ResidualKMeans",
    "TOKENIZERS",
    "Tokenizer",
    "kmeans",
    "kmeans_plus_plus",
    "load_tokenizer",
    "make_tokenizer",
    "nearest_centroid",
]
