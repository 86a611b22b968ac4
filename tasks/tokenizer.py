"""The tokenizer stage: fit the RQ-VAE (or residual k-means) on the embeddings, or reuse the one a
published index was built with (its copy inside the index version)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid.checkpoints import reach
from rqsid.config import QuantizerConfig
from rqsid.embed import read_embeddings
from rqsid.home import ProjectHome
from rqsid.index import index_manifest
from rqsid.jsonio import read_json
from rqsid.quantize.base import META_FILE
from rqsid.versioning import version_id
from tasks.common import Stopwatch, store
from tasks.embeddings import EmbeddingsVersion


@dataclass
class TokenizerVersion:
    version: str
    path: Path  # folder with model/ (load_tokenizer) and manifest.json
    level_sizes: list[int]
    recon_error: float
    fitted: bool  # False when the published tokenizer was reused
    reused: bool
    compute_s: float
    model_dir: Path  # what load_tokenizer reads

    def training_history(self) -> tuple[str, list[dict]]:
        """(kind, per-epoch or per-level records of its fit) as the tokenizer saved them."""
        meta = read_json(self.model_dir / META_FILE)
        return meta["kind"], meta.get("history", [])


def tokenizer_version(embeddings: EmbeddingsVersion, config: QuantizerConfig, max_collision_rate: float | None = None) -> str:
    identity = config.identity() | ({"max_collision_rate": max_collision_rate} if max_collision_rate is not None else {})
    return version_id("tokenizer", {"embeddings": embeddings.version}, identity)


@task(name="fit-tokenizer", cache_policy=NO_CACHE)
def fit_tokenizer(embeddings: EmbeddingsVersion, config: QuantizerConfig, home: ProjectHome | None = None,
                  max_collision_rate: float | None = None) -> TokenizerVersion:
    """Fit the RQ-VAE (or residual k-means) on the embeddings, or return the stored fit; with
    `max_collision_rate` (the gate's), a level is added while the codes collide more (rqsid.quantize.fit_sized)."""
    from rqsid.quantize import fit_sized

    version = tokenizer_version(embeddings, config, max_collision_rate)
    watch = Stopwatch()

    def build(folder: Path) -> dict:
        with watch.compute():
            _, X = read_embeddings(embeddings.file)
            tok = fit_sized(config, X, max_collision_rate)
            tok.save(folder / "model")
            error = tok.reconstruction_error(X)
        reach("fit")
        return {
            "embeddings": embeddings.version,
            "level_sizes": list(tok.codebook_sizes),
            "recon_error": error,
            "epochs_run": len(tok.history),
            "code_space": tok.code_space,
        }

    art = store(home).get_or_create("tokenizer", version, build)
    m = art.manifest
    return TokenizerVersion(
        version, art.path, m["level_sizes"], m["recon_error"], True, art.reused, watch.compute_s, art.path / "model"
    )


def published_tokenizer(index_dir: Path) -> TokenizerVersion:
    """The tokenizer an index was built with (a copy is kept inside the index version)."""
    manifest = index_manifest(index_dir)
    return TokenizerVersion(
        manifest["versions"]["tokenizer"],
        index_dir,
        manifest["level_sizes"],
        manifest["recon_error"],
        False,
        True,
        0.0,
        index_dir / "tokenizer",
    )
