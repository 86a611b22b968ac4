"""Evaluation cases in item ids, for models that do not share an index: the validation cases of today's
data (the champion/challenger contest), the interactions after a model's training cut-off (behaviour
drift), and the per-case Recall/NDCG@k of a Retriever on them.

A case is (user, history, target) with the history in item ids, oldest first. Item ids, not SID rows,
are what two models decoded with different indexes have in common: each maps the history through its
own index (unknown items are skipped) and ranks over its own items (a target it does not know is a miss).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from rqsid import RqsidError
from rqsid.generator.data import MIN_ITEMS


@dataclass(frozen=True)
class Cases:
    user_ids: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def fingerprint(self) -> str:
        """Identifies the exact cases: two evaluations with equal fingerprints saw the same users, histories
        and targets."""
        h = hashlib.blake2b(digest_size=12)
        for user, history, target in zip(self.user_ids, self.histories, self.targets, strict=True):
            h.update("\x1f".join([str(user), *map(str, history), "\x1e", str(target)]).encode() + b"\x1d")
        return h.hexdigest()


def _ordered(interactions: pa.Table) -> pd.DataFrame:
    """user_id, item_id, seq sorted by user then seq, with each row's position within its user."""
    for name in ("user_id", "item_id", "seq"):
        if name not in interactions.column_names:
            raise RqsidError(f"interactions have no column {name!r}")
    frame = interactions.select(["user_id", "item_id", "seq"]).to_pandas()
    frame["user_id"] = frame["user_id"].astype(str)
    frame["item_id"] = frame["item_id"].astype(str)
    frame = frame.sort_values(["user_id", "seq"], kind="stable").reset_index(drop=True)
    frame["pos"] = frame.groupby("user_id", sort=False).cumcount()
    return frame


def _cases_at(frame: pd.DataFrame, rows: np.ndarray) -> Cases:
    """Cases whose targets are the given rows of an `_ordered` frame; each history is the user's earlier items."""
    items = frame["item_id"].to_numpy(dtype=object)
    pos = frame["pos"].to_numpy()
    histories = [items[r - pos[r] : r] for r in rows]
    return Cases(frame["user_id"].to_numpy(dtype=object)[rows], histories, items[rows])


def _sample(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit <= 0 or limit >= len(rows):
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def validation_cases(interactions: pa.Table, max_users: int = 0, seed: int = 0) -> Cases:
    """The leave-one-out validation case of each user with at least 3 interactions (target: the
    second-to-last item; history: every item before it), as the generator's own split defines it;
    `max_users` > 0 takes a seeded sample of them."""
    frame = _ordered(interactions)
    length = frame.groupby("user_id", sort=False)["pos"].transform("size").to_numpy()
    rows = np.flatnonzero((length >= MIN_ITEMS) & (frame["pos"].to_numpy() == length - 2))
    return _cases_at(frame, _sample(rows, max_users, seed))


def last_seq_per_user(interactions: pa.Table) -> pa.Table:
    """(user_id, seq) of each user's last interaction: a model's training cut-off, per user."""
    frame = _ordered(interactions)
    last = frame.groupby("user_id", sort=False)["seq"].max()
    return pa.table({"user_id": pa.array(last.index.astype(str)), "seq": pa.array(last.to_numpy(), pa.int64())})


def cases_after(interactions: pa.Table, cutoff: pa.Table, max_cases: int = 0, seed: int = 0) -> Cases:
    """One case per interaction after the per-user cut-off (`last_seq_per_user` of the training data; a user
    absent from it is new, and all their interactions are newer) that has at least one earlier item."""
    frame = _ordered(interactions)
    last = pd.Series(cutoff.column("seq").to_numpy(), index=cutoff.column("user_id").to_numpy(zero_copy_only=False).astype(str))
    trained_through = frame["user_id"].map(last).fillna(-np.inf).to_numpy(dtype=np.float64)
    newer = (frame["seq"].to_numpy() > trained_through) & (frame["pos"].to_numpy() >= 1)
    return _cases_at(frame, _sample(np.flatnonzero(newer), max_cases, seed))


def per_case_metrics(retriever, cases: Cases, k: int = 10, beam_size: int | None = None) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k of each case ([rank < k] and [rank < k] / log2(rank + 2), rank 0-based over the
    retriever's items); a target the retriever does not know, or a history it knows nothing of, is a miss."""
    if len(cases) == 0:
        return {f"recall@{k}": np.zeros(0), f"ndcg@{k}": np.zeros(0)}
    # history items stay rankable, as in evaluate_split and every published figure on these benchmarks
    answers = retriever.recommend([list(h) for h in cases.histories], k=k, beam_size=beam_size, exclude_history=False)
    rank = np.array([a.item_ids.index(t) if t in a.item_ids else k for a, t in zip(answers, cases.targets, strict=True)])
    hit = rank < k
    return {f"recall@{k}": hit.astype(np.float64), f"ndcg@{k}": np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)}


def summary(per_case: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of per-case metrics and the case count `n`."""
    n = len(next(iter(per_case.values())))
    return {**{name: float(values.mean()) if n else float("nan") for name, values in per_case.items()}, "n": n}
