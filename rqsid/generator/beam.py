"""Constrained beam search over the SID prefix trie, batched over users x beams.

Every step asks the trie which tokens may follow each beam's prefix and masks all others, so a beam
can only ever spell a prefix of a real SID; a beam that emits the end token has reached a leaf,
which maps to exactly one item, and is carried unchanged (score frozen) until the last step. The
only Python loop is over decoding depth (the longest SID, eos included: <= 6 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from rqsid.trie import SidTrie

NEG_INF = float("-inf")


@dataclass(frozen=True)
class DepthMasks:
    """Training constraints at one SID depth, over that depth's candidate tokens (C of them).

    For item i: `index[i]` -> row of `table` (U, C) = tokens allowed after its first `depth` tokens;
    `target[i]` = its own token's column; `choice[i]` = the trie leaves more than one option here
    (otherwise the step has probability 1 and is skipped).
    """

    index: torch.Tensor
    table: torch.Tensor
    target: torch.Tensor
    choice: torch.Tensor


def depth_masks(trie: SidTrie, tokens: np.ndarray, vocab_size: int) -> list[DepthMasks]:
    """Per-depth constraints along every item's own SID, for the trie-constrained training loss."""
    out = []
    nodes = np.zeros(len(tokens), dtype=np.int64)
    for j in range(tokens.shape[1]):
        valid = tokens[:, j] >= 0
        cand = np.unique(tokens[valid, j])
        unique, inverse = np.unique(np.where(valid, nodes, 0), return_inverse=True)
        table = trie.allowed_mask(unique, vocab_size)[:, cand]
        choice = valid & (table.sum(axis=1) > 1)[inverse]
        target = np.searchsorted(cand, np.where(valid, tokens[:, j], cand[0]))
        out.append(DepthMasks(*(torch.from_numpy(a) for a in (inverse.reshape(-1), table, target, choice))))
        nodes = trie.step(nodes, tokens[:, j])
    return out


def _masked_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log-softmax over the allowed tokens only; rows with nothing allowed come out all -inf."""
    masked = logits.masked_fill(~allowed, NEG_INF)
    masked = masked.masked_fill(~allowed.any(dim=1, keepdim=True), 0.0)
    return torch.log_softmax(masked, dim=-1).masked_fill(~allowed, NEG_INF)


@torch.no_grad()
def beam_search(
    model,
    trie: SidTrie,
    history: torch.Tensor,
    lengths: torch.Tensor,
    users: torch.Tensor | None = None,
    query: torch.Tensor | None = None,
    beam_size: int = 20,
    top_k: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k items per user by SID log-probability: items (B, k) int64 (-1 if fewer), their scores
    (B, k), and the token paths the beams spelled (B, k, T), -1 padded.

    `history` (B, P) holds left-aligned item rows (-1 padding), `lengths` (B,) >= 1 the real lengths.
    """
    hidden = model.encode(history, users)[torch.arange(history.shape[0]), lengths - 1]
    items, scores, paths = beam_from_start(model, trie, model.head_start(model.context(hidden, query)), beam_size)
    return items[:, :top_k], scores[:, :top_k], paths[:, :top_k]


@torch.no_grad()
def beam_from_start(model, trie: SidTrie, start: torch.Tensor, beam_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The beam search itself, from (B, d) head start states: (B, beam_size) items best first
    (-1 where fewer complete SIDs were found), their SID log-probabilities, and their token paths."""
    B, K, V = start.shape[0], beam_size, model.vocab_size
    state = start.repeat_interleave(K, dim=0)  # (B*K, d)
    scores = torch.full((B, K), NEG_INF)
    scores[:, 0] = 0.0
    nodes = np.full((B, K), -1, dtype=np.int64)
    nodes[:, 0] = 0
    done = np.zeros((B, K), dtype=bool)
    paths = np.full((B, K, model.sid_len), -1, dtype=np.int64)
    rows = np.arange(B)[:, None]
    for depth in range(model.sid_len):
        tokens = model.depth_candidates[depth]  # only these can occur at this depth
        C = len(tokens)
        allowed = torch.from_numpy(trie.allowed_mask(np.where(done, -1, nodes).reshape(-1), V)[:, tokens.numpy()])
        logp = _masked_log_softmax(model.head_logits(state, depth), allowed).view(B, K, C)
        cand = scores.unsqueeze(-1) + logp
        finished = torch.from_numpy(done)
        cand[finished] = NEG_INF
        cand[..., 0] = torch.where(finished, scores, cand[..., 0])  # a finished beam survives as itself
        scores, flat = cand.view(B, K * C).topk(K, dim=1)
        parent, token = (flat // C).numpy(), tokens[flat % C].numpy()
        parent_nodes, parent_done = nodes[rows, parent], done[rows, parent]
        stepped = trie.step(parent_nodes, token)
        nodes = np.where(parent_done, parent_nodes, stepped)
        paths = paths[rows, parent]
        paths[..., depth] = np.where(parent_done, -1, token)
        nodes[~np.isfinite(scores.numpy())] = -1
        done = trie.leaf_item(nodes) >= 0
        if done.all() or (nodes < 0).all() or depth + 1 == model.sid_len:
            break
        state = state.view(B, K, -1)[torch.from_numpy(rows), torch.from_numpy(parent)].reshape(B * K, -1)
        state = model.head_advance(state, torch.from_numpy(token).reshape(-1), depth)
    items = trie.leaf_item(nodes)
    final = scores.numpy().copy()
    final[items < 0] = NEG_INF
    order = np.argsort(-final, axis=1, kind="stable")
    items, final, paths = items[rows, order], final[rows, order], paths[rows, order]
    items[~np.isfinite(final)] = -1
    paths[items < 0] = -1
    return items, final, paths


@torch.no_grad()
def rank_items(
    model,
    trie: SidTrie,
    history: torch.Tensor,
    lengths: torch.Tensor,
    users: torch.Tensor | None = None,
    query: torch.Tensor | None = None,
    beam_size: int = 20,
    top_k: int = 10,
    rank_mix: float = 0.0,
    candidates: str = "beam",
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per user: the beam's complete SIDs (plus, with candidates="union", the items the
    item-level head scores highest), ranked by SID log-probability + rank_mix * item log-probability.
    `exclude` (B, L) holds item rows (-1 padded) a user's answer must leave out (e.g. their history).
    Returns items (B, k), -1 where fewer were found, and their scores."""
    B = history.shape[0]
    context = model.context(model.encode(history, users)[torch.arange(B), lengths - 1], query)
    start = model.head_start(context)
    items, sid_scores, _ = beam_from_start(model, trie, start, beam_size)
    if rank_mix == 0 and candidates == "beam":
        return _best(items, sid_scores, top_k, exclude)
    item_logp = torch.log_softmax(model.item_logits(context), dim=-1)
    if candidates == "union":
        extra = item_logp.topk(beam_size, dim=1).indices  # (B, beam)
        extra_sid = sid_log_probs(model, trie, start.repeat_interleave(beam_size, dim=0), extra.reshape(-1)).view(B, beam_size)
        items = np.concatenate([items, extra.numpy()], axis=1)
        sid_scores = np.concatenate([sid_scores, extra_sid.numpy()], axis=1)
        items = np.where(_repeated_in_row(items), -1, items)
    safe = torch.from_numpy(np.maximum(items, 0))
    total = torch.from_numpy(sid_scores).float() + rank_mix * item_logp.gather(1, safe)
    return _best(items, total.numpy(), top_k, exclude)


def _best(items: np.ndarray, total: np.ndarray, top_k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The top_k candidates of each row by score, leaving out -1 and excluded items (-1 where fewer remain)."""
    if exclude is not None:
        items = np.where((items[:, :, None] == exclude[:, None, :]).any(axis=2), -1, items)
    total = np.where(items < 0, NEG_INF, total)
    order = np.argsort(-total, axis=1, kind="stable")[:, :top_k]
    rows = np.arange(len(items))[:, None]
    items, total = items[rows, order], total[rows, order]
    items[~np.isfinite(total)] = -1
    return items, total


def _repeated_in_row(items: np.ndarray) -> np.ndarray:
    """True where an item already occurred earlier in its row (-1 never counts as a repeat)."""
    order = np.argsort(items, axis=1, kind="stable")
    sorted_items = np.take_along_axis(items, order, axis=1)
    dup_sorted = np.zeros_like(items, dtype=bool)
    dup_sorted[:, 1:] = (sorted_items[:, 1:] == sorted_items[:, :-1]) & (sorted_items[:, 1:] >= 0)
    out = np.zeros_like(dup_sorted)
    np.put_along_axis(out, order, dup_sorted, axis=1)
    return out


@torch.no_grad()
def sid_log_probs(model, trie: SidTrie, start: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(N,) log-probability of each item's full SID under the trie-constrained head, from (N, d)
    head start states: the exact score beam search assigns to the item when it finds it."""
    tokens = model.item_tokens[items]
    total = torch.zeros(len(items))
    nodes = np.zeros(len(items), dtype=np.int64)
    state = start
    for depth in range(tokens.shape[1]):
        tok = tokens[:, depth]
        live = tok >= 0
        allowed = torch.from_numpy(trie.allowed_mask(nodes, model.vocab_size))
        logp = _masked_log_softmax(model.head_logits(state), allowed)
        total += torch.where(live, logp.gather(1, tok.clamp_min(0)[:, None]).squeeze(1), torch.zeros(()))
        nodes = np.where(live.numpy(), trie.step(nodes, tok.numpy()), -1)
        if depth + 1 < tokens.shape[1]:
            state = model.head_advance(state, tok.clamp_min(0), depth)
    return total


def recommend(
    model,
    trie: SidTrie,
    batch,
    query_vectors: np.ndarray | None = None,
    beam_size: int = 20,
    top_k: int = 10,
    chunk: int = 1024,
    progress: bool = False,
    rank_mix: float = 0.0,
    candidates: str = "beam",
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search for every user of an evaluation `Batch`, in chunks of users (model in eval mode)."""
    was_training = model.training
    model.eval()
    out_items, out_scores = [], []
    starts = range(0, len(batch.targets), chunk)
    for s in tqdm(starts, desc="beam search", disable=not progress, leave=False):
        sl = slice(s, s + chunk)
        query = _query_tensor(batch.queries[sl], query_vectors) if batch.queries is not None and query_vectors is not None else None
        items, scores = rank_items(
            model, trie,
            torch.from_numpy(batch.history[sl]), torch.from_numpy(batch.lengths[sl]),
            torch.from_numpy(batch.user_buckets[sl]) if batch.user_buckets is not None else None,
            query, beam_size, top_k, rank_mix, candidates,
        )
        out_items.append(items)
        out_scores.append(scores)
    model.train(was_training)
    return np.concatenate(out_items), np.concatenate(out_scores)


def _query_tensor(query_ids: np.ndarray, query_vectors: np.ndarray) -> torch.Tensor:
    vectors = query_vectors[np.maximum(query_ids, 0)] * (query_ids >= 0)[..., None]
    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
