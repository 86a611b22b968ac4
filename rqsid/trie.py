"""A compact prefix trie over SID token sequences, for constrained decoding and SID -> item lookup.

Nodes are numbered breadth-first (root 0, then depth 1, ...) and, inside a depth, in the
lexicographic order of their paths, so the children of a node are a contiguous id range sorted
by token. The whole trie is four flat arrays, built with numpy from the sorted token matrix:
`first_child` (CSR row pointer, N + 1), `token` (N), `item` (N, row index at a complete SID's
last token, else -1) and `edge_key` (parent * vocab + token, sorted) for vectorised child lookup.
`save` / `load` keep those arrays in one .npz file (an index version's `trie.npz`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rqsid import RqsidError


def _sorted_rows(tokens: np.ndarray) -> np.ndarray:
    """Row order that sorts the token matrix lexicographically (padding -1 sorts first)."""
    return np.lexsort(tokens.T[::-1])


def _new_prefix_flags(tokens: np.ndarray) -> np.ndarray:
    """flags[i, d]: row i's prefix of length d+1 differs from row i-1's (rows already sorted)."""
    differs = np.ones_like(tokens, dtype=bool)
    differs[1:] = tokens[1:] != tokens[:-1]
    return np.logical_or.accumulate(differs, axis=1)


@dataclass(frozen=True, eq=False)
class SidTrie:
    first_child: np.ndarray  # (N + 1,) children of node p are ids first_child[p] .. first_child[p+1]-1
    token: np.ndarray  # (N,) token on the edge into each node; -1 for the root
    item: np.ndarray  # (N,) item row for the node that ends a complete SID, else -1
    edge_key: np.ndarray  # (N - 1,) parent * vocab_size + token of nodes 1..N-1, ascending
    vocab_size: int

    @classmethod
    def build(cls, token_matrix: np.ndarray, vocab_size: int) -> SidTrie:
        """Trie of the rows of an (n, T) token matrix (rows: tokens then -1 padding, e.g. ending in eos)."""
        tokens = np.asarray(token_matrix, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise RqsidError(f"token matrix must be a non-empty (n, T) array; got shape {tokens.shape}")
        if (tokens >= vocab_size).any():
            raise RqsidError(f"token ids reach {tokens.max()} but vocab_size is {vocab_size}")
        valid = tokens >= 0
        if (valid[:, 1:] & ~valid[:, :-1]).any() or not valid[:, 0].all():
            raise RqsidError("token rows must be left-justified: tokens first, then -1 padding")
        order = _sorted_rows(tokens)
        tokens, valid = tokens[order], valid[order]
        new_node = _new_prefix_flags(tokens) & valid
        lengths = valid.sum(axis=1)
        duplicate = ~new_node[np.arange(len(tokens)), lengths - 1]
        if duplicate.any():
            rows = np.sort(order[np.flatnonzero(duplicate)])[:5].tolist()
            raise RqsidError(f"{int(duplicate.sum())} SIDs repeat an earlier SID, e.g. item rows {rows}")
        return cls._from_sorted(tokens, new_node, order, lengths, vocab_size)

    @classmethod
    def _from_sorted(cls, tokens, new_node, order, lengths, vocab_size) -> SidTrie:
        # column-major walk = breadth-first numbering: depth by depth, lexicographic within a depth
        per_depth = new_node.sum(axis=0)
        depth_base = 1 + np.r_[0, np.cumsum(per_depth)[:-1]]
        node_of = np.where(new_node, np.cumsum(new_node, axis=0) - 1 + depth_base, 0)
        # a row's node at depth d is the last new node at or above it in that column
        node_of = np.maximum.accumulate(node_of, axis=0)
        n_nodes = 1 + int(per_depth.sum())
        parent_of = np.hstack([np.zeros((len(tokens), 1), dtype=np.int64), node_of[:, :-1]])
        # column-major selection lists the new nodes depth by depth, top to bottom: in node-id order
        node_parent = np.r_[-1, parent_of.T[new_node.T]]
        node_token = np.r_[-1, tokens.T[new_node.T]]
        node_item = np.full(n_nodes, -1, dtype=np.int64)
        last = node_of[np.arange(len(tokens)), lengths - 1]
        node_item[last] = order
        children = np.bincount(node_parent[1:], minlength=n_nodes)
        first_child = np.r_[1, 1 + np.cumsum(children)].astype(np.int64)
        index_type = np.int32 if n_nodes < 2**31 else np.int64
        return cls(
            first_child=first_child.astype(index_type),
            token=node_token.astype(np.int32),
            item=node_item.astype(np.int32),
            edge_key=node_parent[1:] * vocab_size + node_token[1:],
            vocab_size=int(vocab_size),
        )

    def save(self, path: str | Path) -> Path:
        """The four arrays and the vocabulary size in one uncompressed .npz file."""
        path = Path(path)
        np.savez(path, first_child=self.first_child, token=self.token, item=self.item, edge_key=self.edge_key,
                 vocab_size=self.vocab_size)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SidTrie:
        path = Path(path)
        if not path.exists():
            raise RqsidError(f"trie file not found: {path}")
        with np.load(path) as arrays:
            return cls(first_child=arrays["first_child"], token=arrays["token"], item=arrays["item"],
                       edge_key=arrays["edge_key"], vocab_size=int(arrays["vocab_size"]))

    @property
    def n_nodes(self) -> int:
        return len(self.token)

    @property
    def nbytes(self) -> int:
        return self.first_child.nbytes + self.token.nbytes + self.item.nbytes + self.edge_key.nbytes

    def step(self, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Child of each node along each token; -1 where the node is -1 or the token is not allowed."""
        nodes = np.asarray(nodes, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        nodes, tokens = np.broadcast_arrays(nodes, tokens)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        keys = np.where(ok, nodes * self.vocab_size + tokens, -1)
        pos = np.minimum(np.searchsorted(self.edge_key, keys), len(self.edge_key) - 1)
        found = ok & (self.edge_key[pos] == keys)
        return np.where(found, pos + 1, -1)

    def allowed(self, node: int) -> np.ndarray:
        """Tokens that may follow the prefix ending at `node` (ascending); empty for -1 or a leaf."""
        if node < 0:
            return np.empty(0, dtype=np.int64)
        return self.token[self.first_child[node] : self.first_child[node + 1]].astype(np.int64)

    def allowed_mask(self, nodes: np.ndarray, vocab_size: int | None = None) -> np.ndarray:
        """(B, V) bool: mask[b, t] says token t may follow nodes[b]; all False for -1 nodes."""
        nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
        vocab_size = self.vocab_size if vocab_size is None else vocab_size
        mask = np.zeros((len(nodes), vocab_size), dtype=bool)
        live = nodes >= 0
        start = np.where(live, self.first_child[np.maximum(nodes, 0)], 0)
        count = np.where(live, self.first_child[np.maximum(nodes, 0) + 1] - start, 0)
        beam = np.repeat(np.arange(len(nodes)), count)
        # child ids: start[b] + 0..count[b]-1, built without a Python loop
        child = np.repeat(start - np.r_[0, np.cumsum(count)[:-1]], count) + np.arange(count.sum())
        mask[beam, self.token[child]] = True
        return mask

    def leaf_item(self, nodes: np.ndarray) -> np.ndarray:
        """Item row for nodes that end a complete SID, else -1."""
        nodes = np.asarray(nodes, dtype=np.int64)
        return np.where(nodes >= 0, self.item[np.maximum(nodes, 0)], -1).astype(np.int64)

    def walk(self, token_rows: np.ndarray) -> np.ndarray:
        """Node reached by each row of tokens (-1 padding is skipped; -1 if the path leaves the trie)."""
        rows = np.atleast_2d(np.asarray(token_rows, dtype=np.int64))
        nodes = np.zeros(len(rows), dtype=np.int64)
        for column in rows.T:  # one vectorised step per position, not per item
            stepped = self.step(nodes, column)
            nodes = np.where(column >= 0, stepped, nodes)
        return nodes

    def lookup(self, tokens: np.ndarray) -> np.ndarray | int:
        """Item row of a complete SID (1-D tokens -> int) or of each row (2-D -> array); -1 if none."""
        tokens = np.asarray(tokens, dtype=np.int64)
        items = self.leaf_item(self.walk(tokens))
        return int(items[0]) if tokens.ndim == 1 else items
