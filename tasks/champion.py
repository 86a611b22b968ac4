"""The champion's two stages: the contest at registration (today's challenger against the champion as it
would serve today, on the same validation users of today's data) and behaviour drift (the champion on the
interactions after its training cut-off, against what it scored at registration)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from rqsid import RqsidError
from rqsid.catalog import read_interactions
from rqsid.config import DriftConfig, RqsidConfig
from rqsid.drift import BehaviourReport, behaviour_report
from rqsid.generator.bundle import Bundle
from rqsid.generator.cases import cases_after, summary, validation_cases
from rqsid.generator.contest import ContestResult, paired_contest
from tasks.common import Stopwatch
from tasks.generator import GeneratorVersion
from tasks.serving import Registered, champion_of, evaluate, generator_bundle, metric_names, serving_index
from tasks.tracking import Tracker

# ---------------------------------------------------------------- the contest


@dataclass
class Contest:
    challenger: Bundle
    challenger_figures: dict[str, float]  # on the contest cases: recall@10, ndcg@10, n
    champion: Registered | None  # the registered champion before the contest (None: there is none yet)
    defender: Bundle | None  # the champion as it would serve today: rebound to today's index, or on its own
    defender_figures: dict[str, float] | None
    serving_note: str  # how the defender serves today's index, and why
    result: ContestResult | None  # None when there was nobody to contest
    cases: str  # fingerprint of the validation cases both answered
    compute_s: float

    @property
    def challenger_wins(self) -> bool:
        return self.champion is None or (self.result is not None and self.result.promoted)

    @property
    def defender_rebound(self) -> bool:
        """The champion now serves a newer index than its registered version does (the stable path)."""
        return self.defender is not None and self.defender.index_version != self.champion.bundle.index_version

    def metrics(self) -> dict[str, float]:
        """Both evaluations and the decision, under MLflow metric names."""
        out = {f"contest.challenger.{k}": v for k, v in metric_names(self.challenger_figures).items()}
        if self.defender_figures is not None:
            out |= {f"contest.champion.{k}": v for k, v in metric_names(self.defender_figures).items()}
            out |= {"contest.champion_version": float(self.champion.version),
                    "contest.champion_rebound": float(self.defender_rebound)}
        if self.result is not None:
            out |= {"contest.mean_diff": self.result.mean_diff, "contest.se": self.result.se, "contest.z": self.result.z}
        out["contest.challenger_wins"] = float(self.challenger_wins)
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "challenger": self.challenger_figures, "champion": self.defender_figures,
                "champion_version": self.champion.version if self.champion else None, "serving": self.serving_note,
                "result": self.result.as_dict() if self.result else None, "challenger_wins": self.challenger_wins}


@task(name="contest", cache_policy=NO_CACHE)
def contest(generator: GeneratorVersion, index_dir: Path, interactions_file: Path, name: str, config: RqsidConfig,
            tracker: Tracker) -> Contest:
    """Evaluate the challenger and the champion (each decoded with its own index: the champion with today's
    index when that kept every SID it knows, else its own) on the same validation users of today's data;
    decide by the paired rule (rqsid.generator.contest). A model refitted on train + validation is judged by
    the model it was refitted from (`Bundle.selection`): the refit has trained on the validation targets,
    the selection model has not, and neither has the champion's (today's validation targets are at or after
    the validation targets of the champion's day), so the contest never rewards memorised targets. The
    winner's refitted model is the one that serves."""
    watch = Stopwatch()
    with watch.compute():
        challenger = generator_bundle(generator, index_dir, interactions_file)
        cases = validation_cases(read_interactions(interactions_file), config.serving.contest_users, config.generator.seed)
        per_case = evaluate(challenger.selection(), cases)
    champion = champion_of(tracker, name)
    defender, note, result, defender_figures = None, "no champion yet", None, None
    if champion is not None and _same_model(champion.bundle, challenger):
        note = f"the challenger is the champion (version {champion.version})"
    elif champion is not None:
        with watch.compute():
            defender, note = serving_index(champion.bundle, index_dir)
            defender_case = evaluate(defender.selection(), cases)
            result = paired_contest(cases, defender_case, per_case, config.serving.contest_metric, config.serving.promote_z)
            defender_figures = result.champion
    return Contest(challenger, summary(per_case), champion, defender, defender_figures, note, result,
                   cases.fingerprint(), watch.compute_s)


def _same_model(a: Bundle, b: Bundle) -> bool:
    return a.meta.get("generator_version") == b.meta.get("generator_version") and a.index_version == b.index_version


# ---------------------------------------------------------------- behaviour drift


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

    def as_dict(self) -> dict[str, Any]:
        return {**self.report.as_dict(), "champion_version": self.champion_version, "index_version": self.index_version}


@task(name="behaviour-drift", cache_policy=NO_CACHE)
def measure_behaviour(champion: Registered, interactions_file: Path, config: DriftConfig, seed: int = 0) -> BehaviourMeasure:
    """The champion's Recall@10 on today's interactions after its per-user training cut-off. Measured with the
    model its registration figure belongs to (the selection model, when the served one is a refit), so that
    the ratio compares one model on two sets of cases."""
    watch = Stopwatch()
    with watch.compute():
        through = champion.bundle.trained_through
        if through is None:
            raise RqsidError(f"champion version {champion.version} records no training cut-off")
        cases = cases_after(read_interactions(interactions_file), through, config.behaviour_cases, seed)
        report = behaviour_report(summary(evaluate(champion.bundle.selection(), cases)), champion.recall_at_10, config)
    return BehaviourMeasure(report, champion.version, champion.bundle.index_version, watch.compute_s)
