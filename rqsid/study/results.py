"""What the study measured, typed: one model per stage, and the whole as it is kept in results.json.

Rows (one per layer of a fit, one per generator variant) stay plain records: they are tables, read by
column name in the verdicts and the report, and written to results.json as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rqsid import RqsidError
from rqsid.config import RqsidConfig
from rqsid.jsonio import json_default

Row = dict[str, Any]


class DatasetInfo(BaseModel):
    name: str
    n_items: int
    dim: int
    embeddings: str = ""  # where the vectors came from
    quarantined: dict[str, int] = Field(default_factory=dict)
    n_interactions: int = 0
    n_users: int | None = None  # users with a test target, once the generator ran


# The study's shape by mode: seeds per tokenizer and the synthetic inputs of finding 2 (--quick drops the
# Gaussian input); listed top-K values are fractions of the level size besides the automatic K.
QUICK_SEEDS, FULL_SEEDS = 2, 3
QUICK_INPUTS, FULL_INPUTS = ("uniform", "skewed"), ("uniform", "gaussian", "skewed")


def default_ks(codebook_size: int, quick: bool) -> list[int]:
    """Listed top-K values besides the automatic one: 1/8 of the level (quick), or 1/32, 1/8, 1/4."""
    fractions = (8,) if quick else (32, 8, 4)
    return sorted({max(1, codebook_size // f) for f in fractions})


class StudySettings(BaseModel):
    quick: bool
    seeds: int
    generator_seeds: int
    methods: list[str]
    ks: list[int]
    quantizer: dict[str, Any]
    generator_minutes: float
    prune: dict[str, Any]

    @classmethod
    def make(cls, config: RqsidConfig, quick: bool, seeds: int | None = None, generator_seeds: int = 1,
             methods: list[str] | None = None, ks: list[int] | None = None) -> StudySettings:
        """The mode's defaults for what the caller left open, checked before any work."""
        n_seeds = seeds or (QUICK_SEEDS if quick else FULL_SEEDS)
        if n_seeds < 1 or generator_seeds < 1 or generator_seeds > n_seeds:
            raise RqsidError(f"need 1 <= generator_seeds ({generator_seeds}) <= seeds ({n_seeds})")
        q = config.quantizer
        return cls(quick=quick, seeds=n_seeds, generator_seeds=generator_seeds, methods=list(methods or ["rqvae", "rkmeans"]),
                   ks=list(ks) if ks is not None else default_ks(q.codebook_size, quick),
                   quantizer={k: getattr(q, k) for k in ("levels", "codebook_size", "epochs", "latent_dim")},
                   generator_minutes=config.generator.max_train_minutes,
                   prune={"gini_threshold": config.prune.gini_threshold, "max_collision_rate": config.prune.max_collision_rate})

    @property
    def inputs(self) -> tuple[str, ...]:
        return QUICK_INPUTS if self.quick else FULL_INPUTS


class TokenizerResults(BaseModel):
    """Finding 1: our tokenizers on the real embeddings over seeds, and the public reference SIDs."""

    rows: list[Row]
    summary: list[Row]
    references: dict[str, str] = Field(default_factory=dict)


class UniformityResults(BaseModel):
    """Finding 2: the same tokenizers on synthetic inputs of the real size and dimension."""

    rows: list[Row]
    summary: list[Row]
    inputs: dict[str, str] = Field(default_factory=dict)
    synthetic: dict[str, Any] = Field(default_factory=dict)


class GeneratorResults(BaseModel):
    """Findings 3 and 4: the generator on each SID variant, paired comparisons, the popularity control."""

    variants: list[Row]
    comparisons: dict[str, Any]
    popularity: dict[str, Any] | None = None


class StudyResults(BaseModel):
    command: str = ""
    made: str = ""
    machine: str = ""
    dataset: DatasetInfo
    settings: StudySettings
    tokenizers: TokenizerResults | None = None
    uniformity: UniformityResults | None = None
    generator: GeneratorResults | None = None
    timing: dict[str, Any] = Field(default_factory=dict)
    findings: list[dict[str, Any]] = Field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The results.json layout: stages and fields that were not measured are left out."""
        data = {key: value for key, value in self.model_dump().items() if value is not None}
        data["dataset"] = {key: value for key, value in data["dataset"].items() if value is not None}
        return data

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.as_json(), indent=1, default=json_default) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> StudyResults:
        return cls.model_validate(json.loads(Path(path).read_text()))
