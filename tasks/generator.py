"""The generator stage: stage the interactions, train the generative retriever on an index version's SIDs,
evaluate it on validation and test, and remember its MLflow registration in its manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid import RqsidError
from rqsid.catalog import read_interactions, validate_interactions, write_interactions, write_quarantine
from rqsid.checkpoints import reach
from rqsid.config import GeneratorConfig
from rqsid.home import ProjectHome
from rqsid.index import IndexSnapshot, index_manifest, item_embeddings, read_index_sids
from rqsid.jsonio import read_json, write_json_atomic
from rqsid.sources import read_interactions_source
from rqsid.versioning import file_digest, version_id
from tasks.common import Stopwatch, store


@dataclass
class GeneratorVersion:
    version: str
    path: Path  # model/ (the saved generator), manifest.json with the evaluation
    metrics: dict  # {"valid": {"all"|"head"|"tail": {...}}, "test": {...}}
    stats: dict
    registrations: dict[str, int]  # MLflow model name -> the version this generator was registered as
    reused: bool
    compute_s: float

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def training_history(self) -> tuple[list[dict], int | None]:
        """(per-epoch records, the epoch whose weights were kept) as the generator saved them."""
        meta = read_json(self.model_dir / "meta.json")
        return meta.get("history", []), (meta.get("best") or {}).get("epoch")


def interactions_of(index_dir: Path, home: ProjectHome | None = None) -> Path:
    """The validated interactions that came with the index's catalog version."""
    manifest = index_manifest(index_dir)
    path = store(home).get("catalog", manifest["versions"]["catalog"]).path / "interactions.parquet"
    if not path.exists():
        raise RqsidError(f"catalog {manifest['catalog_name']} came without interactions; pass --interactions")
    return path


def stage_interactions(source: str, index_dir: Path, home: ProjectHome | None = None) -> Path:
    """Import an interactions file, quarantine rows that name unknown items, store it by content."""
    version = f"interactions-{file_digest(source)}"

    def build(folder: Path) -> dict:
        clean, quarantine = validate_interactions(read_interactions_source(source), read_index_sids(index_dir).item_ids)
        write_interactions(clean, folder / "interactions.parquet")
        write_quarantine(quarantine, folder / "interactions_quarantine.parquet")
        return {"source": source, "rows": clean.num_rows, "quarantined": quarantine.num_rows}

    return store(home).get_or_create("interactions", version, build).path / "interactions.parquet"


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"valid.all.recall_at_10": ...}: MLflow metric names cannot hold '@'."""
    out = {}
    for split, groups in metrics.items():
        for group, values in groups.items():
            for name, value in values.items():
                if value == value:  # NaN (an empty head or tail) is left out
                    out[f"{split}.{group}.{name.replace('@', '_at_')}"] = float(value)
    return out


@task(name="train-generator", cache_policy=NO_CACHE)
def train_and_evaluate(index_dir: Path, interactions_file: Path, config: GeneratorConfig,
                       home: ProjectHome | None = None, on_epoch: Callable[[dict], None] | None = None) -> GeneratorVersion:
    """Train the generative retriever on the index's SIDs, evaluate it on validation and test; `on_epoch` gets
    each epoch's record while it trains (not called when the stored generator is reused)."""
    from prefect import get_run_logger

    from rqsid.generator.data import SidVocab, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask
    from rqsid.generator.train import evaluate_split, train_generator

    version = version_id("generator", {"index": Path(index_dir).name, "interactions": file_digest(interactions_file)},
                         config.identity())
    watch = Stopwatch()
    logger = get_run_logger()

    def build(folder: Path) -> dict:
        with watch.compute():
            vocab = SidVocab.from_sid_table(read_index_sids(index_dir))
            seqs = sequences_from_interactions(read_interactions(interactions_file), vocab)
            # item vectors from text: the embeddings of the index's embeddings version, in SID-table row order
            features = item_embeddings(index_dir, store(home)) if config.item_text else None
            trained = train_generator(seqs, vocab, config, out_dir=folder / "model", log=logger.info, item_features=features,
                                      on_epoch=on_epoch)
            reach("train")
            head = head_item_mask(IndexSnapshot.load(index_dir).unpruned(), vocab)
            metrics = {split: evaluate_split(trained, seqs, split, head)[0] for split in ("valid", "test")}
        return {"index": Path(index_dir).name, "interactions": str(interactions_file), "metrics": metrics,
                "flat_metrics": flat_metrics(metrics), "stats": trained.stats, "best": trained.best}

    art = store(home).get_or_create("generator", version, build)
    m = art.manifest
    return GeneratorVersion(version, art.path, m["metrics"], m["stats"], _registrations(m), art.reused, watch.compute_s)


def _registrations(manifest: dict) -> dict[str, int]:
    """Model name -> version (manifests written before "registrations" held one "registered" and its "model_name")."""
    older = {manifest["model_name"]: manifest["registered"]} if manifest.get("registered") is not None else {}
    return older | manifest.get("registrations", {})


def mark_registered(generator: GeneratorVersion, model_name: str, model_version: int) -> None:
    """Record the MLflow model version in the generator's manifest, so a rerun does not register it twice. Two
    catalogs with equal content share generator versions, hence one record per model name."""
    path = generator.path / "manifest.json"
    manifest = read_json(path)
    generator.registrations = _registrations(manifest) | {model_name: model_version}
    write_json_atomic(path, manifest | {"registrations": generator.registrations})
