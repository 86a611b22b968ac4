"""Drift statistics: how far today's catalog has moved from the published index.

Three catalog signals, each against a threshold of `DriftConfig`:
- the share of items that are new or whose text changed (by content hash);
- the reconstruction error of those items under the index's tokenizer, relative to the error the
  index measured on its own items (a model fitted on yesterday's catalog reconstructs novel items badly);
- the layer-2 Gini (as `rqsid.metrics` measures it for the gate) of the index once the new items get
  their SIDs from the current tokenizer and pruning: new items piling onto a few layer-2 tokens
  re-create the hourglass. The threshold applies to this merged distribution because a few hundred
  new items alone over hundreds of codes always look concentrated; their own Gini is reported beside it.

And one behaviour signal: users change too. The champion's Recall@10 on the interactions after its
training cut-off falls more than `max_recall_drop` (a share) below what it scored at registration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rqsid.config import DriftConfig


def apply_removed_tokens(codes: np.ndarray, level: int, removed) -> np.ndarray:
    """Codes with the index's pruned tokens at a 1-based level set to -1, as the index did for its items."""
    codes = np.array(codes, dtype=np.int64, copy=True)
    if removed is not None and len(removed):
        column = codes[:, level - 1]
        column[np.isin(column, np.asarray(removed, dtype=np.int64))] = -1
    return codes


@dataclass
class DriftReport:
    n_items: int
    n_new: int
    n_changed: int
    n_removed: int
    new_share: float
    recon_error_new: float | None
    recon_error_index: float | None
    recon_ratio: float | None
    layer2_gini_index: float | None
    layer2_gini_merged: float | None
    layer2_gini_new_only: float | None
    exceeded: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.exceeded)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


def drift_report(
    delta: dict[str, Any],
    recon_error_new: float | None,
    recon_error_index: float | None,
    layer2_gini_index: float | None,
    layer2_gini_merged: float | None,
    layer2_gini_new_only: float | None,
    config: DriftConfig,
) -> DriftReport:
    """Compare the three signals with their thresholds; `exceeded` names each one over its bound."""
    ratio = None
    if recon_error_new is not None and recon_error_index:
        ratio = float(recon_error_new / recon_error_index)
    share = float(delta["new_or_changed_share"])
    exceeded = []
    if share > config.max_new_share:
        exceeded.append(f"new_share {share:.3f} > {config.max_new_share}")
    if ratio is not None and ratio > config.max_recon_ratio:
        exceeded.append(f"recon_ratio {ratio:.3f} > {config.max_recon_ratio}")
    if layer2_gini_merged is not None and layer2_gini_merged > config.max_new_layer2_gini:
        exceeded.append(f"layer2_gini {layer2_gini_merged:.3f} > {config.max_new_layer2_gini}")
    return DriftReport(
        n_items=int(delta["n_items"]),
        n_new=int(delta["n_new"]),
        n_changed=int(delta["n_changed"]),
        n_removed=int(delta["n_removed"]),
        new_share=share,
        recon_error_new=recon_error_new,
        recon_error_index=recon_error_index,
        recon_ratio=ratio,
        layer2_gini_index=layer2_gini_index,
        layer2_gini_merged=layer2_gini_merged,
        layer2_gini_new_only=layer2_gini_new_only,
        exceeded=exceeded,
    )


# ---------------------------------------------------------------- behaviour drift


@dataclass
class BehaviourReport:
    """The champion on the interactions after its training cut-off, against its registration figure."""

    n_cases: int
    recall_at_10: float | None
    ndcg_at_10: float | None
    registered_recall_at_10: float | None
    threshold: float | None  # (1 - max_recall_drop) x the registration figure
    exceeded: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def drifted(self) -> bool:
        return bool(self.exceeded)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


def behaviour_report(measured: dict[str, float], registered_recall: float | None, config: DriftConfig) -> BehaviourReport:
    """Judge the champion's Recall@10 on newer interactions (`measured`: recall@10, ndcg@10, n) against
    (1 - max_recall_drop) x its registration Recall@10; too few cases, or no registration figure, are not judged."""
    n = int(measured.get("n", 0))
    recall = measured.get("recall@10") if n else None
    ndcg = measured.get("ndcg@10") if n else None
    threshold = None if registered_recall is None else (1 - config.max_recall_drop) * registered_recall
    report = BehaviourReport(n, recall, ndcg, registered_recall, threshold)
    if registered_recall is None:
        report.note = "the champion has no registration Recall@10"
    elif n < config.min_behaviour_cases:
        report.note = f"{n} newer interactions, fewer than drift.min_behaviour_cases={config.min_behaviour_cases}: not judged"
    elif recall < threshold:
        report.exceeded.append(f"recall_at_10 {recall:.4f} < {threshold:.4f} = (1 - {config.max_recall_drop}) x "
                               f"{registered_recall:.4f} at registration")
    return report
