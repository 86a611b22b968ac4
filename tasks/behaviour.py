"""The behaviour-drift stage: the champion on the interactions after its training cut-off, judged against
what it scored at registration (rqsid.drift.behaviour_report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid import RqsidError
from rqsid.catalog import read_interactions
from rqsid.config import DriftConfig
from rqsid.drift import BehaviourReport, behaviour_report
from rqsid.generator.cases import cases_after, summary
from tasks.common import Stopwatch
from tasks.serving import Registered, evaluate


@dataclass
class BehaviourMeasure:
    report: BehaviourReport
    champion_version: int
    index_version: str
    compute_s: float

    def metrics(self) -> dict[str, float]:
        """The report under MLflow metric names."""
        r = self.report
        values: dict[str, Any] = {
            "behaviour.n_cases": r.n_cases, "behaviour.recall_at_10": r.recall_at_10, "behaviour.ndcg_at_10": r.ndcg_at_10,
            "behaviour.registered_recall_at_10": r.registered_recall_at_10, "behaviour.threshold": r.threshold,
            "behaviour.drifted": float(r.drifted), "behaviour.champion_version": self.champion_version,
        }
        return {k: float(v) for k, v in values.items() if v is not None and v == v}


@task(name="behaviour-drift", cache_policy=NO_CACHE)
def measure_behaviour(champion: Registered, interactions_file: Path, config: DriftConfig, seed: int = 0) -> BehaviourMeasure:
    """The champion's Recall@10 on today's interactions after its per-user training cut-off."""
    watch = Stopwatch()
    with watch.compute():
        through = champion.bundle.trained_through
        if through is None:
            raise RqsidError(f"champion version {champion.version} records no training cut-off")
        cases = cases_after(read_interactions(interactions_file), through, config.behaviour_cases, seed)
        report = behaviour_report(summary(evaluate(champion.bundle, cases)), champion.recall_at_10, config)
    return BehaviourMeasure(report, champion.version, champion.bundle.index_version, watch.compute_s)
