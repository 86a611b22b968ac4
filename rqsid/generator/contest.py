"""The champion/challenger rule: a paired comparison on the same cases, promoted only beyond noise.

Both models answer the same validation cases of today's data (`rqsid.generator.cases`). Per case u,
d_u = challenger_u - champion_u on the contest metric (Recall@10 by default). The challenger wins when

    mean(d) > z * SE,   SE = std(d, ddof=1) / sqrt(n),   and mean(d) > 0

that is, when its mean paired gain is more than z standard errors above zero (z = 2 by default: about a
2.3 % one-sided chance that a challenger no better than the champion wins by luck, by the normal
approximation to the mean of n >= a few hundred differences). Pairing removes the between-user
variance that two separate samples would carry, so smaller real gains pass than with unpaired figures.
A tie, or any gain within noise, keeps the champion: moving the alias has a cost (a new model serves).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rqsid import RqsidError
from rqsid.generator.cases import Cases, summary


@dataclass(frozen=True)
class ContestResult:
    metric: str
    cases: str  # fingerprint of the cases both models answered
    n: int
    champion: dict[str, float]  # means over the cases
    challenger: dict[str, float]
    mean_diff: float  # challenger - champion on `metric`
    se: float
    z: float
    promoted: bool

    @property
    def rule(self) -> str:
        return f"mean paired gain in {self.metric} > {self.z:g} x its standard error, and > 0"

    def as_dict(self) -> dict:
        return {**asdict(self), "rule": self.rule}


def paired_contest(cases: Cases, champion: dict[str, np.ndarray], challenger: dict[str, np.ndarray],
                   metric: str = "recall@10", z: float = 2.0) -> ContestResult:
    """Decide on per-case metrics of both models over the same `cases` (one value per case, in case order)."""
    for who, values in (("champion", champion), ("challenger", challenger)):
        if metric not in values:
            raise RqsidError(f"the {who}'s evaluation has no {metric}")
        if len(values[metric]) != len(cases):
            raise RqsidError(f"the {who} was evaluated on {len(values[metric])} cases, the contest has {len(cases)}: "
                             "both must answer the same cases")
    diff = np.asarray(challenger[metric], dtype=np.float64) - np.asarray(champion[metric], dtype=np.float64)
    n = len(diff)
    mean = float(diff.mean()) if n else 0.0
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    return ContestResult(metric, cases.fingerprint(), n, summary(champion), summary(challenger), mean, se, z,
                         promoted=bool(n > 1 and mean > 0 and mean > z * se))
