"""The retriever as a product: a trained generator bound to the SID table it serves, answering
`recommend(histories, k, queries)` for a batch of users with item ids, scores and SIDs.

Binding: a generator is trained on one SID table (an index version). It can serve a NEWER table only
if every item it was trained on kept its SID there (the stable re-index path, which only adds items);
then the new items are recommendable at once, before any retrain: their SIDs enter the trie, and
their item vectors are composed from their SID tokens (and text embedding), exactly as for the old
items, minus the learned per-item embedding they do not have. When SIDs changed, `bind` refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rqsid import RqsidError
from rqsid.generator.beam import rank_items
from rqsid.generator.data import SidVocab
from rqsid.generator.model import GenerativeRetriever
from rqsid.generator.train import TrainedGenerator, build_trie
from rqsid.quantize.base import torch_threads

QueryEmbedder = Callable[[list[str]], np.ndarray]


@dataclass
class Recommendation:
    """One user's answer: item ids best first, their scores (log-probabilities, higher is better),
    their SIDs as text, and how many history items the index did not know (skipped)."""

    item_ids: list[str]
    scores: list[float]
    sids: list[str]
    unknown_history_items: int = 0
    note: str = ""

    def as_dict(self) -> dict:
        return {
            "item_ids": self.item_ids,
            "scores": self.scores,
            "sids": self.sids,
            "unknown_history_items": self.unknown_history_items,
            "note": self.note,
        }


@dataclass
class Retriever:
    trained: TrainedGenerator
    embed_queries: QueryEmbedder | None = None
    threads: int | None = None
    _sid_text: np.ndarray | None = field(default=None, repr=False)

    @property
    def vocab(self) -> SidVocab:
        return self.trained.vocab

    @property
    def uses_query(self) -> bool:
        return self.trained.cfg.use_query

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        queries: Sequence[str | None] | None = None,
        beam_size: int | None = None,
        batch_size: int = 1024,
        exclude_history: bool = True,
    ) -> list[Recommendation]:
        """Top-k items for each history (item ids in time order, oldest first). Unknown history items
        are skipped and counted; a history with no known item gets an empty answer and a note. With
        `exclude_history` (the default) no answer repeats an item of its own history; where leaving them
        out cuts an answer short of k, that user's beam widens by their history's length."""
        if k < 1:
            raise RqsidError(f"k must be at least 1, not {k}")
        empty = [i for i, h in enumerate(histories) if len(h) == 0]
        if empty:
            raise RqsidError(
                f"{len(empty)} histories are empty (first at position {empty[0]}): a recommendation needs at least one item"
            )
        if queries is not None and len(queries) != len(histories):
            raise RqsidError(f"{len(queries)} queries for {len(histories)} histories")
        cfg = self.trained.cfg
        beam = max(beam_size or cfg.beam_size, k)
        rows, unknown = self._history_rows(histories)
        answers = [Recommendation([], [], [], int(u)) for u in unknown]
        known = np.flatnonzero([len(r) > 0 for r in rows])
        for i in np.setdiff1d(np.arange(len(rows)), known):
            answers[i].note = "none of the history items is in the index"
        query_vectors = self._query_vectors(queries)
        self.trained.model.eval()
        with torch_threads(self.threads):
            for start in range(0, len(known), batch_size):
                users = known[start : start + batch_size]
                if exclude_history:
                    items, scores = self._rank_leaving_out_history(users, rows, query_vectors, beam, k)
                else:
                    items, scores = self._rank(users, rows, None, query_vectors, beam, k)
                for u, item_row, score_row in zip(users, items, scores, strict=True):
                    found = item_row >= 0
                    answers[u].item_ids = self.vocab.item_ids[item_row[found]].astype(str).tolist()
                    answers[u].scores = [round(float(s), 5) for s in score_row[found]]
                    answers[u].sids = self.sid_text()[item_row[found]].tolist()
        return answers

    def _rank_leaving_out_history(self, users, rows, query_vectors, beam: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """_rank with each user's history items left out. That can cut an answer short: such a user is ranked
        again with the beam widened by what was left out (grouped by that width, so that a user's answer never
        depends on the rest of the batch)."""
        seen = [np.unique(rows[u]) for u in users]
        items, scores = self._rank(users, rows, seen, query_vectors, beam, k)
        left_out = np.array([len(s) for s in seen])
        short = (items >= 0).sum(axis=1) < np.minimum(k, self.vocab.n_items - left_out)
        for width in np.unique(left_out[short]):
            group = np.flatnonzero(short & (left_out == width))
            items[group], scores[group] = self._rank(users[group], rows, [seen[i] for i in group], query_vectors,
                                                     beam + int(width), k)
        return items, scores

    def _rank(self, users, rows, seen, query_vectors, beam: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """rank_items for a group of users, leaving out the item rows of `seen` (one array per user) if given:
        (len(users), k) item rows (-1 where fewer) and scores."""
        cfg = self.trained.cfg
        history, lengths = _left_aligned([rows[u] for u in users], cfg.max_history)
        exclude = _left_aligned(seen, max(len(s) for s in seen))[0] if seen is not None else None
        query = torch.from_numpy(query_vectors[users]) if query_vectors is not None else None
        return rank_items(self.trained.model, self.trained.trie, torch.from_numpy(history), torch.from_numpy(lengths),
                          None, query, beam, k, cfg.rank_mix, cfg.candidates, exclude)

    def sid_text(self) -> np.ndarray:
        if self._sid_text is None:
            self._sid_text = self.vocab.sid_strings()
        return self._sid_text

    def _history_rows(self, histories) -> tuple[list[np.ndarray], np.ndarray]:
        flat = [str(item) for h in histories for item in h]
        rows = self.vocab.rows_of(np.asarray(flat, dtype=object)) if flat else np.zeros(0, dtype=np.int64)
        bounds = np.cumsum([0] + [len(h) for h in histories])
        per_user = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
        return [r[r >= 0] for r in per_user], np.array([int((r < 0).sum()) for r in per_user])

    def _query_vectors(self, queries) -> np.ndarray | None:
        if not self.uses_query:
            if queries is not None and any(q for q in queries):
                raise RqsidError("this model was not trained for search: it takes no queries")
            return None
        if queries is None or any(not q for q in queries):
            raise RqsidError("this model is query-conditioned (search): every request needs a query text")
        if self.embed_queries is None:
            raise RqsidError("this model is query-conditioned but no query embedder was given")
        return np.ascontiguousarray(self.embed_queries(list(queries)), dtype=np.float32)


def _left_aligned(rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `width` items of each history, left-aligned, -1 padded; and the lengths."""
    lengths = np.array([min(len(r), width) for r in rows], dtype=np.int64)
    out = np.full((len(rows), max(int(lengths.max()), 1)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : lengths[i]] = r[len(r) - lengths[i] :]
    return out, lengths


# ---------------------------------------------------------------- serving a newer index


def bind(trained: TrainedGenerator, vocab: SidVocab, item_features: np.ndarray | None = None) -> TrainedGenerator:
    """The trained generator serving `vocab` (a newer SID table) instead of the one it was trained on.

    Every trained item must keep its exact SID (the new table may add items, and with them new dedup
    tokens); otherwise an RqsidError says how many changed. New items get item vectors from their SID
    tokens (+ text, when the model uses text), and no per-item embedding."""
    old = trained.vocab
    if vocab.fingerprint() == old.fingerprint():
        return trained
    rows = vocab.rows_of(old.item_ids)
    if (rows < 0).any():
        raise RqsidError(f"{int((rows < 0).sum())} items the model was trained on are missing from the new SID table")
    token_map = _token_map(old, vocab)
    width = max(old.tokens.shape[1], vocab.tokens.shape[1])
    was = _padded(np.where(old.tokens >= 0, token_map[np.maximum(old.tokens, 0)], -1), width)
    now = _padded(vocab.tokens[rows], width)
    changed = int((was != now).any(axis=1).sum())
    if changed:
        raise RqsidError(
            f"{changed} of the model's {old.n_items} items have another SID in the new table: serve the "
            "index version the model was trained on until a retrained model wins"
        )
    cfg = trained.cfg
    text = None
    if cfg.item_text:
        if item_features is None or len(item_features) != vocab.n_items:
            raise RqsidError("this model composes item vectors from text: pass the new table's item embeddings")
        text = torch.from_numpy(np.ascontiguousarray(item_features, dtype=np.float32))

    def bound(old_model: GenerativeRetriever) -> GenerativeRetriever:
        model = GenerativeRetriever(vocab, cfg, trained.query_dim, text)
        _copy_weights(old_model, model, token_map, rows)
        return model.eval()

    selected = bound(trained.selected_model) if trained.selected_model is not None else None
    return TrainedGenerator(bound(trained.model), vocab, build_trie(vocab), cfg, trained.query_dim, trained.history, trained.best,
                            trained.stats, selected)


def _padded(tokens: np.ndarray, width: int) -> np.ndarray:
    return np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=-1)


def _token_map(old: SidVocab, new: SidVocab) -> np.ndarray:
    """old token id -> new token id: the same id below the old end token; the end token moves to the
    new end (new dedup tokens may come before it)."""
    if new.eos < old.eos:
        raise RqsidError("the new SID table has fewer tokens than the model's: it is not a superset")
    mapping = np.arange(old.vocab_size)
    mapping[old.eos] = new.eos
    return mapping


def _copy_weights(src: GenerativeRetriever, dst: GenerativeRetriever, token_map: np.ndarray, item_rows: np.ndarray) -> None:
    src_state, dst_state = src.state_dict(), dst.state_dict()
    with torch.no_grad():
        for name, value in src_state.items():
            if name in ("item_tokens", "item_text"):
                continue  # the new table's own
            target = dst_state[name]
            if name == "token_emb.weight":
                target.copy_(_spread(value, token_map, target.shape[0], pad_row=True))
            elif name == "out_bias":
                target.copy_(_spread(value, token_map, target.shape[0], pad_row=False))
            elif name == "id_emb.weight":
                target.zero_()
                target[torch.from_numpy(item_rows)] = value
            else:
                target.copy_(value)


def _spread(rows: torch.Tensor, token_map: np.ndarray, size: int, pad_row: bool) -> torch.Tensor:
    """Old per-token rows placed at their new ids; tokens new to the table (new dedup tokens) start
    from the mean of the old token rows; the padding row (the last row of an embedding) stays zero."""
    n_tokens = len(token_map)
    out = torch.zeros((size,) + tuple(rows.shape[1:]), dtype=rows.dtype)
    out[torch.from_numpy(token_map)] = rows[:n_tokens]
    fresh = np.setdiff1d(np.arange(size - 1 if pad_row else size), token_map)
    if len(fresh):
        out[torch.from_numpy(fresh)] = rows[: n_tokens - 1].mean(dim=0)  # all old tokens but the end token
    return out
