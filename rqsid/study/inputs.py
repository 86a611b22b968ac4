"""The study's inputs: a catalog with its interactions and embeddings (from a file, a cache in the
project home, or embedded now), the public reference SIDs that come with it, and the synthetic inputs
of finding 2 (uniform, Gaussian, Zipf-skewed), each with an id that names it in the version store."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rqsid import RqsidError
from rqsid.lookup import align_embeddings
from rqsid.versioning import catalog_version, file_digest, item_content_hashes, version_id

KNOWN_DATASETS = {"beauty": ("amazon-beauty-2014", 1), "scientific": ("amazon-scientific-2018", 0)}


@dataclass
class StudyData:
    name: str
    catalog: Any  # pa.Table (validated)
    interactions: Any | None  # pa.Table (validated) or None
    item_ids: np.ndarray  # catalog order, object
    X: np.ndarray  # float32 (n, d), rows = item_ids
    references: dict[str, Path]  # name -> public *.index.json
    id_offset: int = 0
    embeddings: str = ""  # where the vectors came from
    quarantined: dict[str, int] = field(default_factory=dict)
    input_id: str = ""  # names the real input in the version store: the catalog's items and the vectors' file


def dataset_source(dataset: str) -> tuple[str, Path, int]:
    """(name, folder or file, reference id offset) for "beauty", "scientific" or a path."""
    from rqsid.home import shared_data_dir

    if dataset.lower() in KNOWN_DATASETS:
        folder, offset = KNOWN_DATASETS[dataset.lower()]
        return dataset.lower(), shared_data_dir() / folder, offset
    path = Path(dataset)
    if not path.exists():
        raise RqsidError(f"dataset {dataset!r} is neither beauty, scientific nor an existing path")
    return (path.stem if path.is_file() else path.name) or "catalog", path, 0


def load_study_data(dataset: str, embeddings: str | Path | None = None, interactions: str | Path | None = None,
                    embed_config=None, cache_dir: str | Path | None = None, progress: bool = True) -> StudyData:
    """The catalog (validated), its interactions, its embeddings (from a file, a cache, or embedded now)
    and the public reference SID files that come with it (a `reference-sids/` folder beside the data)."""
    from rqsid.catalog import validate_catalog, validate_interactions
    from rqsid.importers import import_dataset, import_interactions_table

    name, source, offset = dataset_source(dataset)
    raw_catalog, raw_inter = import_dataset(source)
    catalog, bad_items = validate_catalog(raw_catalog)
    item_ids = np.asarray(catalog.column("item_id").to_pylist(), dtype=object)
    if interactions is not None:
        raw_inter = import_interactions_table(interactions)
    quarantined = {"items": bad_items.num_rows}
    inter = None
    if raw_inter is not None:
        inter, bad_inter = validate_interactions(raw_inter, item_ids)
        quarantined["interactions"] = bad_inter.num_rows
    items_version = catalog_version(item_ids, item_content_hashes(catalog))
    X, where = _study_embeddings(name, catalog, item_ids, items_version, embeddings, embed_config, cache_dir, progress)
    folder = source if source.is_dir() else source.parent
    references = {p.name.split(".")[0]: p for p in sorted((folder / "reference-sids").glob("*.index.json"))}
    input_id = version_id("study-input", {"items": items_version, "embeddings": file_digest(where)})
    return StudyData(name, catalog, inter, item_ids, X, references, offset, where, quarantined, input_id)


def _study_embeddings(name, catalog, item_ids, items_version, embeddings, embed_config, cache_dir,
                      progress) -> tuple[np.ndarray, str]:
    from rqsid.config import EmbedConfig
    from rqsid.embed import TextEmbedder, embed_catalog, read_embeddings, write_embeddings

    path = Path(embeddings) if embeddings else None
    if path is None and cache_dir is not None:
        path = Path(cache_dir) / f"{name}-{items_version}.parquet"
        if not path.exists():
            cfg = embed_config or EmbedConfig()
            embedder = TextEmbedder.from_config(cfg)
            table = embed_catalog(catalog, embedder, max_chars=cfg.max_chars, progress=progress)
            ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
            write_embeddings(path, ids, np.asarray(table.column("vector").to_pylist(), dtype=np.float32))
    if path is None:
        raise RqsidError("no embeddings: pass an embeddings file or a cache folder to embed into")
    ids, X = read_embeddings(path)
    return align_embeddings(item_ids, ids, X, path), str(path)


# ---------------------------------------------------------------- synthetic inputs (finding 2)


def uniform_sphere(n: int, d: int, seed: int) -> np.ndarray:
    """n points uniform on the unit sphere in d dimensions (normalised isotropic Gaussians)."""
    X = isotropic_gaussian(n, d, seed)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def isotropic_gaussian(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def zipf_sizes(n: int, clusters: int, exponent: float) -> np.ndarray:
    """Cluster sizes proportional to 1 / rank**exponent, summing to n (largest remainders round up)."""
    if clusters < 1 or n < clusters:
        raise RqsidError(f"zipf_sizes: need 1 <= clusters <= n, got clusters={clusters}, n={n}")
    weights = 1.0 / np.arange(1, clusters + 1, dtype=np.float64) ** exponent
    exact = weights / weights.sum() * n
    sizes = np.floor(exact).astype(np.int64)
    sizes[np.argsort(sizes - exact)[: n - sizes.sum()]] += 1
    return np.sort(sizes)[::-1]


def zipf_mixture(n: int, d: int, seed: int, clusters: int = 256, exponent: float = 1.0,
                 spread: float = 0.5) -> np.ndarray:
    """A skewed input: Gaussian clusters around random unit centres with Zipf-distributed sizes,
    projected onto the unit sphere (like normalised text embeddings). `spread` is the expected noise
    norm relative to the unit centre norm."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(clusters), zipf_sizes(n, clusters, exponent))
    X = centres[labels] + rng.standard_normal((n, d)) * (spread / math.sqrt(d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)].astype(np.float32)


@dataclass(frozen=True)
class SyntheticSpec:
    """The synthetic inputs of finding 2, each the size and dimension of the real embeddings."""

    kinds: tuple[str, ...] = ("uniform", "gaussian", "skewed")
    clusters: int = 256
    exponent: float = 1.0
    spread: float = 0.5

    def make(self, n: int, d: int, seed: int) -> dict[str, np.ndarray]:
        makers: dict[str, Callable[[], np.ndarray]] = {
            "uniform": lambda: uniform_sphere(n, d, seed),
            "gaussian": lambda: isotropic_gaussian(n, d, seed),
            "skewed": lambda: zipf_mixture(n, d, seed, min(self.clusters, n), self.exponent, self.spread),
        }
        unknown = sorted(set(self.kinds) - set(makers))
        if unknown:
            raise RqsidError(f"unknown synthetic input kinds {unknown}; use {sorted(makers)}")
        return {kind: makers[kind]() for kind in self.kinds}

    def make_one(self, kind: str, n: int, d: int, seed: int) -> np.ndarray:
        return SyntheticSpec((kind,), self.clusters, self.exponent, self.spread).make(n, d, seed)[kind]

    def input_id(self, kind: str, n: int, d: int, seed: int) -> str:
        """Names one drawn input in the version store (what `make_one` returns for these arguments)."""
        return version_id("synthetic", {}, {"kind": kind, "n": n, "d": d, "seed": seed, "clusters": self.clusters,
                                            "exponent": self.exponent, "spread": self.spread})

    def describe(self) -> dict[str, str]:
        """What each input of the experiment is (the synthetic kinds drawn, and the real embeddings)."""
        texts = {
            "uniform": "uniform on the unit sphere (normalised isotropic Gaussian)",
            "gaussian": "isotropic Gaussian (not normalised)",
            "skewed": f"{self.clusters} Gaussian clusters with Zipf(s={self.exponent}) sizes, noise norm "
                      f"{self.spread} around unit centres, normalised",
            "real": "the catalog's text embeddings",
        }
        return {kind: texts[kind] for kind in (*self.kinds, "real")}
