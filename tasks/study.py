"""The hourglass study's units of work as Prefect tasks. Each tokenizer fit and each generator run is kept
in the version store under an id of its inputs and config, so a study that crashed (in any process)
resumes on its rerun: finished units are read back, only the rest is computed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid.config import EmbedConfig, GeneratorConfig, QuantizerConfig
from rqsid.home import ProjectHome
from rqsid.sids import SidTable
from rqsid.study import GeneratorRun, StudyData, SweepFit, load_study_data
from rqsid.study.sweeps import describe_fit, fit_version, load_fit, save_fit, sweep_fit
from rqsid.study.variants import load_run, run_generator, run_version, save_run
from tasks.common import store

Draw = Callable[[], tuple[np.ndarray | None, np.ndarray]]  # () -> (item ids or None, X): an input, drawn on demand


@task(name="study-data", cache_policy=NO_CACHE)
def study_data(dataset: str, embeddings: str | None, interactions: str | None, embed: EmbedConfig,
               home: ProjectHome | None = None) -> StudyData:
    """The catalog, interactions and embeddings; the embeddings are cached in the home by catalog content."""
    return load_study_data(dataset, embeddings, interactions, embed, (home or ProjectHome.default()).cache / "study",
                           progress=False)


@task(name="fit-sids", cache_policy=NO_CACHE)
def fit_sids(source: str, input_id: str, draw: Draw, config: QuantizerConfig, method: str, seed: int,
             keep_table: bool = False, home: ProjectHome | None = None) -> tuple[SweepFit, bool]:
    """One fit of the sweep, or the stored one; returns (fit, reused)."""

    def build(folder: Path) -> dict:
        item_ids, X = draw()
        fit = sweep_fit(source, item_ids, X, config, method, seed, keep_table)
        print(describe_fit(fit))
        return save_fit(folder, fit)

    art = store(home).get_or_create("study-fit", fit_version(input_id, config, method, seed, keep_table), build)
    return load_fit(art.path, art.manifest), art.reused


@task(name="train-variant", cache_policy=NO_CACHE)
def train_variant(variant: str, table: SidTable, unpruned: SidTable, interactions: pa.Table, interactions_digest: str,
                  config: GeneratorConfig, home: ProjectHome | None = None) -> tuple[GeneratorRun, bool]:
    """The generator trained and tested on one SID variant, or the stored run of equal SIDs; (run, reused)."""

    def build(folder: Path) -> dict:
        return save_run(folder, run_generator(variant, table, unpruned, interactions, config, log=print))

    art = store(home).get_or_create("study-generator", run_version(table, unpruned, interactions_digest, config), build)
    return load_run(art.path, variant), art.reused
