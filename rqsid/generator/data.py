"""Data for the generative retriever: SID vocabulary, user sequences, leave-one-out splits, queries.

Items enter the model only through their SID tokens (never their raw ids: P5 ids encode time).
Sequences are kept ragged (flat item rows + per-user offsets) and cut into padded batches on demand.

Leave-one-out, per user with n >= 3 items in order: the last item is the test target (history = the
n-1 before it), the second-to-last the validation target (history = the n-2 before it), and the first
n-2 items are the training sequence, where every prefix predicts the item that follows it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from rqsid import RqsidError

MIN_ITEMS = 3  # one training item, the validation target and the test target


# ---------------------------------------------------------------- SID vocabulary


@dataclass(frozen=True)
class SidVocab:
    """What the model needs from a SID table: per-item token rows over one global vocabulary.

    `tokens` (n, T) holds each item's tokens in level order, then `eos`, then -1 padding; token ids
    follow the SidTable vocabulary (levels, then dedup, then eos = vocab_size - 1).
    """

    item_ids: np.ndarray
    tokens: np.ndarray
    vocab_size: int
    eos: int
    level_offsets: tuple[int, ...] = ()  # first token id of each level, then of the dedup range (for display)

    @classmethod
    def from_sid_table(cls, table) -> "SidVocab":
        return cls.build(np.asarray(table.item_ids, dtype=object), table.token_matrix(), int(table.eos),
                         tuple(int(o) for o in table.offsets))

    @classmethod
    def build(cls, item_ids: np.ndarray, tokens: np.ndarray, eos: int, level_offsets: tuple[int, ...] = ()) -> "SidVocab":
        """From an (n, T) token matrix whose rows end with `eos` (the largest token id)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or len(tokens) != len(item_ids):
            raise RqsidError(f"token matrix has shape {tokens.shape} for {len(item_ids)} items")
        bad = np.flatnonzero((tokens == eos).sum(axis=1) != 1)
        if len(bad):
            raise RqsidError(f"{len(bad)} SIDs do not end with exactly one eos token (rows {bad[:5].tolist()})")
        if len(pd.unique(pd.Series(item_ids))) != len(item_ids):
            raise RqsidError("SID table has duplicate item ids")
        if tokens.max() > eos:
            raise RqsidError(f"token ids reach {int(tokens.max())} beyond the end token {eos}")
        return cls(np.asarray(item_ids, dtype=object), tokens, eos + 1, eos, tuple(level_offsets))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def max_len(self) -> int:
        return self.tokens.shape[1]

    def fingerprint(self) -> str:
        """Identifies the exact (item, SID) assignment a model was trained on."""
        h = hashlib.blake2b(digest_size=12)
        h.update("\x1f".join(map(str, self.item_ids)).encode())
        h.update(np.ascontiguousarray(self.tokens).tobytes())
        return h.hexdigest()

    def sid_strings(self) -> np.ndarray:
        """Each item's SID as text, '<a_12><b_200><c_7><d_1>': a letter per level (the last one for the
        dedup token), the code within that level; a pruned level is simply absent. Without level
        offsets (a hand-built vocabulary), tokens print as '<t_ID>'."""
        offsets = np.asarray(self.level_offsets, dtype=np.int64)
        out = []
        for row in self.tokens:
            row = row[(row >= 0) & (row != self.eos)]
            if len(offsets):
                level = np.searchsorted(offsets, row, side="right") - 1
                out.append("".join(f"<{chr(97 + lv)}_{t - offsets[lv]}>" for lv, t in zip(level, row)))
            else:
                out.append("".join(f"<t_{t}>" for t in row))
        return np.asarray(out, dtype=object)

    def rows_of(self, item_ids) -> np.ndarray:
        """Row index of each item id (-1 where the id has no SID)."""
        index = pd.Index(self.item_ids.astype(str))
        return index.get_indexer(pd.Index(np.asarray(item_ids, dtype=object).astype(str)))


# ---------------------------------------------------------------- user sequences


def user_bucket(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """Stable hash of each user id into `buckets` (not Python's salted hash())."""
    if buckets <= 1:
        return np.zeros(len(user_ids), dtype=np.int64)
    digests = [hashlib.blake2b(str(u).encode(), digest_size=8).digest() for u in user_ids]
    return np.array([int.from_bytes(d, "little") % buckets for d in digests], dtype=np.int64)


@dataclass
class Sequences:
    """Per-user item sequences in order (ragged): user u owns items[offsets[u]:offsets[u+1]].

    `query_ids` (same layout, -1 = none) points into `query_texts` / `query_vectors`: the query that
    led to that interaction (logged, or derived from the item's catalog entry).
    """

    user_ids: np.ndarray
    items: np.ndarray
    offsets: np.ndarray
    query_ids: np.ndarray | None = None
    query_texts: list[str] = field(default_factory=list)
    query_vectors: np.ndarray | None = None
    dropped_users: int = 0

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def has_queries(self) -> bool:
        return self.query_ids is not None and self.query_vectors is not None


def sequences_from_interactions(interactions: pa.Table, vocab: SidVocab) -> Sequences:
    """Group canonical interactions by user in `seq` order; items are mapped to SID rows.

    Users with fewer than 3 interactions cannot be split leave-one-out and are dropped (counted).
    """
    for name in ("user_id", "item_id", "seq"):
        if name not in interactions.column_names:
            raise RqsidError(f"interactions have no column {name!r}")
        nulls = interactions.column(name).null_count
        if nulls:
            rows = np.flatnonzero(interactions.column(name).is_null().to_numpy(zero_copy_only=False))
            raise RqsidError(f"{nulls} interactions have no {name} (rows {rows[:5].tolist()}); "
                             "`rqsid import` quarantines such rows")
    users = np.asarray(interactions.column("user_id").to_numpy(zero_copy_only=False), dtype=object)
    items = np.asarray(interactions.column("item_id").to_numpy(zero_copy_only=False), dtype=object)
    seq = interactions.column("seq").to_numpy(zero_copy_only=False)
    rows = vocab.rows_of(items)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise RqsidError(f"{len(missing)} interactions name items without a SID (rows {missing[:5].tolist()}, item {items[missing[0]]!r})")
    user_codes, user_ids = pd.factorize(pd.Series(users), sort=False)
    order = np.lexsort((seq, user_codes))
    counts = np.bincount(user_codes, minlength=len(user_ids))
    keep_user = counts >= MIN_ITEMS
    if not keep_user.any():
        raise RqsidError(f"no user has {MIN_ITEMS} or more interactions ({len(user_ids)} users, at most "
                         f"{int(counts.max(initial=0))} each): leave-one-out needs {MIN_ITEMS} per user")
    keep_row = keep_user[user_codes[order]]
    order = order[keep_row]
    kept_codes = np.flatnonzero(keep_user)
    offsets = np.concatenate([[0], np.cumsum(counts[kept_codes])]).astype(np.int64)
    queries = _query_column(interactions, order)
    return Sequences(
        user_ids=np.asarray(user_ids, dtype=object)[kept_codes],
        items=rows[order].astype(np.int64),
        offsets=offsets,
        query_ids=queries[0],
        query_texts=queries[1],
        dropped_users=int((~keep_user).sum()),
    )


def _query_column(interactions: pa.Table, order: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    if "query" not in interactions.column_names or interactions.column("query").null_count == len(interactions):
        return None, []
    texts = pd.Series(interactions.column("query").to_numpy(zero_copy_only=False)[order], dtype=object)
    codes, uniques = pd.factorize(texts, sort=False)  # None -> -1
    return codes.astype(np.int64), [str(u) for u in uniques]


# ---------------------------------------------------------------- queries derived from the catalog


def _words(text: str | None) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", (text or "").lower())


def _dedup_words(words: list[str]) -> str:
    return " ".join(dict.fromkeys(words))


def item_query_variants(brand: str | None, categories: list[str] | None) -> list[str]:
    """Product-search queries for one item, built from its category path and brand.

    The usual construction for catalogs without query logs (Ai et al., SIGIR 2017; Zhang et al. 2018):
    the words of the category path, most specific last, duplicates removed. Variations: the leaf alone,
    parent + leaf, brand + leaf, and the whole path. Items with no category fall back to the brand.
    """
    cats = [c for c in (categories or []) if c and c.strip()]
    brand_words = _words(brand)
    leaf = _words(cats[-1]) if cats else []
    parent = _words(cats[-2]) if len(cats) >= 2 else []
    path = [w for c in cats for w in _words(c)]
    variants = [leaf, parent + leaf, brand_words + leaf, path] if cats else [brand_words]
    texts = [_dedup_words(v) for v in variants if v]
    return list(dict.fromkeys(texts)) or ["product"]


def derive_queries(seqs: Sequences, vocab: SidVocab, catalog: pa.Table, seed: int = 0) -> Sequences:
    """Give every interaction a query derived from its item's catalog entry (one variant per interaction,
    chosen by a seeded hash so it is deterministic). Returns a copy with query ids and texts set."""
    variants = _catalog_variants(catalog, vocab)
    n_variants = np.array([len(v) for v in variants], dtype=np.int64)
    flat_texts = [t for v in variants for t in v]
    codes, uniques = pd.factorize(pd.Series(flat_texts, dtype=object), sort=False)
    first = np.concatenate([[0], np.cumsum(n_variants)[:-1]])
    rng = np.random.default_rng(seed)
    pick = np.floor(rng.random(len(seqs.items)) * n_variants[seqs.items]).astype(np.int64)
    query_ids = codes[first[seqs.items] + pick].astype(np.int64)
    return Sequences(seqs.user_ids, seqs.items, seqs.offsets, query_ids, [str(u) for u in uniques], None, seqs.dropped_users)


def _catalog_variants(catalog: pa.Table, vocab: SidVocab) -> list[list[str]]:
    ids = np.asarray(catalog.column("item_id").to_numpy(zero_copy_only=False), dtype=object)
    rows = vocab.rows_of(ids)
    brands = catalog.column("brand").to_pylist()
    cats = catalog.column("categories").to_pylist()
    per_row: list[list[str]] = [["product"]] * vocab.n_items
    for row, brand, cat in zip(rows, brands, cats):
        if row >= 0:
            per_row[row] = item_query_variants(brand, cat)
    missing = vocab.n_items - int((rows >= 0).sum())
    if missing:
        raise RqsidError(f"catalog lacks {missing} of the {vocab.n_items} items in the SID table")
    return per_row


def embed_queries(seqs: Sequences, embedder) -> Sequences:
    """Embed each distinct query text once with the item text model (rqsid.embed.TextEmbedder)."""
    if not seqs.query_texts:
        raise RqsidError("no queries to embed: pass a catalog to derive them or log them in interactions.query")
    vectors = np.asarray(embedder.embed(seqs.query_texts), dtype=np.float32)
    return Sequences(seqs.user_ids, seqs.items, seqs.offsets, seqs.query_ids, seqs.query_texts, vectors, seqs.dropped_users)


# ---------------------------------------------------------------- leave-one-out batches


@dataclass
class Batch:
    """Padded, left-aligned histories: row b holds `lengths[b]` items then -1.

    For training, `targets[b, t]` is the item that follows history[b, :t+1] (-1 = no loss);
    for evaluation, `targets[b]` is the one held-out item after the whole history.
    """

    history: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    users: np.ndarray
    queries: np.ndarray | None  # same shape as targets: query id that leads to the target
    user_buckets: np.ndarray | None = None


def _ragged_rows(seqs: Sequences, users: np.ndarray, stop_back, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indexes (into seqs.items) of each user's last `width` items before the final `stop_back` ones."""
    ends = seqs.offsets[users + 1] - stop_back
    starts = np.maximum(seqs.offsets[users], ends - width)
    lengths = ends - starts
    cols = np.arange(width)
    index = starts[:, None] + cols[None, :]
    valid = cols[None, :] < lengths[:, None]
    return np.where(valid, index, 0), valid, lengths


def train_batch(
    seqs: Sequences, users: np.ndarray, max_history: int, buckets: np.ndarray | None = None,
    rng: np.random.Generator | None = None, holdout: int = 2,
) -> Batch:
    """Training windows over each user's training part (all but the last `holdout` items: 2 = the
    validation and test targets; 1 = only the test target, for a refit on train + validation):
    max_history+1 items; inputs are the window minus its last item, targets the window shifted by one.
    The window ends at the training part's end, or, with `rng`, at a random point for parts longer
    than the window (so every target of a long history is seen over the epochs)."""
    back = np.full(len(users), holdout, dtype=np.int64)
    if rng is not None:
        spare = np.maximum(seqs.offsets[users + 1] - holdout - seqs.offsets[users] - (max_history + 1), 0)
        back += np.floor(rng.random(len(users)) * (spare + 1)).astype(np.int64)
    index, valid, lengths = _ragged_rows(seqs, users, back, max_history + 1)
    window = np.where(valid, seqs.items[index], -1)
    history = window[:, :-1].copy()
    targets = window[:, 1:].copy()
    in_len = np.maximum(lengths - 1, 0)
    history[np.arange(max_history)[None, :] >= in_len[:, None]] = -1
    width = max(int(in_len.max()), 1)  # trim columns that are padding for every user
    history, targets = history[:, :width], targets[:, :width]
    queries = None
    if seqs.query_ids is not None:
        q = np.where(valid, seqs.query_ids[index], -1)[:, 1 : width + 1]
        queries = np.where(targets >= 0, q, -1)
    return Batch(history, in_len, targets, users, queries, None if buckets is None else buckets[users])


def eval_batch(seqs: Sequences, users: np.ndarray, split: str, max_history: int, buckets: np.ndarray | None = None) -> Batch:
    """History and held-out target for split 'valid' (second-to-last item) or 'test' (last item)."""
    if split not in ("valid", "test"):
        raise RqsidError(f"split must be 'valid' or 'test', not {split!r}")
    back = 1 if split == "test" else 2
    index, valid, lengths = _ragged_rows(seqs, users, back, max_history)
    history = np.where(valid, seqs.items[index], -1)[:, : max(int(lengths.max()), 1)]
    target_pos = seqs.offsets[users + 1] - back
    queries = seqs.query_ids[target_pos] if seqs.query_ids is not None else None
    return Batch(history, lengths, seqs.items[target_pos], users, queries, None if buckets is None else buckets[users])


def item_counts_before(seqs: Sequences, n_items: int, split: str) -> np.ndarray:
    """How often each item occurs in the histories visible for `split` ('train'/'valid': all but the
    last two items of each user; 'test': all but the last) — the popularity baseline's counts."""
    back = 1 if split == "test" else 2
    pos = np.arange(len(seqs.items))
    user_of = np.repeat(np.arange(seqs.n_users), seqs.lengths)
    seen = pos < seqs.offsets[user_of + 1] - back
    return np.bincount(seqs.items[seen], minlength=n_items)
