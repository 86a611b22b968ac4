"""Semantic IDs: the table of per-level codes, dedup tokens, the token vocabulary and parquet I/O.

A SID is the item's kept level codes in level order, an optional dedup token, then `eos`.
Each level (and the dedup level) has its own vocabulary range, so a SID with a pruned level
is still unambiguous: level l code c is token `offset[l] + c`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rqsid import RqsidError

LEVEL_SIZES_KEY = b"rqsid.level_sizes"
PRUNING_KEY = b"rqsid.pruning"
REFERENCE_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


def path_keys(codes: np.ndarray) -> np.ndarray:
    """One integer key per row, equal exactly when the rows are equal (-1 included)."""
    n, levels = codes.shape
    if levels == 0:
        return np.zeros(n, dtype=np.int64)
    radix = codes.max(axis=0).astype(np.int64) + 2  # values -1..max shift to 0..max+1
    if np.sum(np.log2(radix.astype(np.float64))) < 62:
        keys = np.zeros(n, dtype=np.int64)
        for level in range(levels):
            keys = keys * radix[level] + (codes[:, level] + 1)
        return keys
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def neutral_keys(item_ids: Sequence[str]) -> np.ndarray:
    """A pseudo-random but fixed 64-bit key per item id (a hash of the id's text): an order that carries
    no information about the items. Catalog ids often do (P5's Beauty ids follow first appearance in
    time), and a dedup token given in id order would leak it to a model that sees SIDs."""
    keys = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in item_ids]
    return np.asarray(keys, dtype=np.uint64)


def dedup_tokens(codes: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    """Dedup token per item: items sharing all their codes get 0, 1, 2, ... in the order of their
    `neutral_keys`; items whose path is unique get -1."""
    keys = path_keys(codes)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    dedup = np.full(len(keys), -1, dtype=np.int64)
    if len(shared) == 0:
        return dedup
    tie = neutral_keys([item_ids[i] for i in shared])
    order = shared[np.lexsort((tie, keys[shared]))]  # by path, then by neutral key inside a path
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    group_start = np.flatnonzero(starts)
    dedup[order] = np.arange(len(order)) - group_start[np.cumsum(starts) - 1]
    return dedup


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code path (pruned levels skipped) is shared with another item."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(path_keys(codes), return_inverse=True, return_counts=True)
    return float(np.mean(counts[inverse] > 1))


@dataclass(frozen=True, eq=False)
class SidTable:
    """Items' SIDs. `codes` is (n, L) with -1 where a level was pruned; `dedup` is -1 where not needed."""

    item_ids: np.ndarray
    codes: np.ndarray
    dedup: np.ndarray
    level_sizes: tuple[int, ...]
    pruning: dict[str, Any] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    @property
    def offsets(self) -> np.ndarray:
        """offset[l] = first token id of level l; offset[L] = first dedup token id."""
        return np.r_[0, np.cumsum(self.level_sizes)].astype(np.int64)

    @property
    def dedup_size(self) -> int:
        return int(self.dedup.max()) + 1 if len(self.dedup) and self.dedup.max() >= 0 else 0

    @property
    def eos(self) -> int:
        return int(self.offsets[-1]) + self.dedup_size

    @property
    def vocab_size(self) -> int:
        return self.eos + 1

    def token_matrix(self) -> np.ndarray:
        """(n, T) token ids: kept level tokens, the dedup token if any, eos, then -1 padding."""
        offsets = self.offsets
        level_tokens = np.where(self.codes >= 0, self.codes + offsets[:-1], -1)
        dedup_token = np.where(self.dedup >= 0, self.dedup + offsets[-1], -1)[:, None]
        eos = np.full((len(self), 1), self.eos, dtype=np.int64)
        tokens = np.hstack([level_tokens, dedup_token, eos])
        # left-justify: a stable sort of "is padding" moves kept tokens to the front in order
        order = np.argsort(tokens < 0, axis=1, kind="stable")
        tokens = np.take_along_axis(tokens, order, axis=1)
        width = int((tokens >= 0).sum(axis=1).max()) if len(self) else 1
        return np.ascontiguousarray(tokens[:, :width])

    def sid_lengths(self) -> np.ndarray:
        """Tokens per SID, eos included."""
        return (self.codes >= 0).sum(axis=1) + (self.dedup >= 0) + 1

    def row_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row index of each item id; raises on unknown ids."""
        index = {item: row for row, item in enumerate(self.item_ids)}
        missing = [item for item in item_ids if item not in index]
        if missing:
            raise RqsidError(f"{len(missing)} item ids have no SID, e.g. {missing[:5]}")
        return np.array([index[item] for item in item_ids], dtype=np.int64)

    def with_codes(self, codes: np.ndarray, pruning: dict[str, Any] | None) -> "SidTable":
        """A new table with changed codes; dedup tokens are recomputed on the new paths."""
        codes = np.asarray(codes, dtype=np.int64)
        return SidTable(self.item_ids, codes, dedup_tokens(codes, self.item_ids), self.level_sizes, pruning)

    def removed_codes(self) -> dict[int, list[int]]:
        """1-based level -> codes that pruning retired from that level's vocabulary."""
        if not self.pruning:
            return {}
        return {int(level): list(codes) for level, codes in self.pruning.get("removed", {}).items()}


def _check_codes(item_ids: np.ndarray, codes: np.ndarray, level_sizes: Sequence[int]) -> None:
    if codes.ndim != 2 or codes.shape[0] != len(item_ids):
        raise RqsidError(f"codes must be (n_items, levels) = ({len(item_ids)}, L); got {codes.shape}")
    if codes.shape[1] != len(level_sizes):
        raise RqsidError(f"codes have {codes.shape[1]} levels but level_sizes has {len(level_sizes)}")
    sizes = np.asarray(level_sizes, dtype=np.int64)
    bad = np.flatnonzero(((codes < -1) | (codes >= sizes)).any(axis=1))
    if len(bad):
        raise RqsidError(f"{len(bad)} rows have codes outside [-1, level size), e.g. rows {bad[:5].tolist()}")
    _check_ids(item_ids, "SIDs")


def assign_sids(
    item_ids: Sequence[str], codes: np.ndarray, level_sizes: Sequence[int], pruning: dict[str, Any] | None = None
) -> SidTable:
    """Build a SidTable from a tokenizer's codes, adding dedup tokens to colliding items."""
    item_ids = np.asarray(item_ids).astype(str).astype(object)  # python str objects, vectorised
    codes = np.array(codes, dtype=np.int64)  # a copy: the table must not change when the caller's array does
    codes.setflags(write=False)
    _check_codes(item_ids, codes, level_sizes)
    return SidTable(item_ids, codes, dedup_tokens(codes, item_ids), tuple(int(s) for s in level_sizes), pruning)


def write_sids(path: str | Path, table: SidTable) -> Path:
    """Parquet: item_id, c1..cL (int32, null = pruned), dedup (int32, null = none) + metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: dict[str, pa.Array] = {"item_id": pa.array(table.item_ids.astype(str), type=pa.string())}
    for level in range(table.levels):
        column = table.codes[:, level]
        columns[f"c{level + 1}"] = pa.array(column.astype(np.int32), mask=column < 0, type=pa.int32())
    columns["dedup"] = pa.array(table.dedup.astype(np.int32), mask=table.dedup < 0, type=pa.int32())
    metadata = {LEVEL_SIZES_KEY: json.dumps(list(table.level_sizes)).encode()}
    if table.pruning is not None:
        metadata[PRUNING_KEY] = json.dumps(table.pruning).encode()
    pq.write_table(pa.table(columns).replace_schema_metadata(metadata), path)
    return path


def _int_column(arrow: pa.Table, name: str) -> np.ndarray:
    """A nullable int column as int64 with -1 for null."""
    return arrow.column(name).fill_null(-1).to_numpy().astype(np.int64)


def read_sids(path: str | Path) -> SidTable:
    """Read a SID parquet written by `write_sids`; dedup tokens are taken as stored."""
    path = Path(path)
    if not path.exists():
        raise RqsidError(f"SID file not found: {path}")
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise RqsidError(f"{path} is not a readable parquet file ({str(err).splitlines()[0]})") from None
    metadata = arrow.schema.metadata or {}
    if LEVEL_SIZES_KEY not in metadata:
        raise RqsidError(f"{path} has no rqsid.level_sizes metadata; not a SID table")
    level_sizes = tuple(json.loads(metadata[LEVEL_SIZES_KEY]))
    pruning = json.loads(metadata[PRUNING_KEY]) if PRUNING_KEY in metadata else None
    missing = [c for c in ("item_id", *(f"c{n + 1}" for n in range(len(level_sizes))), "dedup") if c not in arrow.column_names]
    if missing:
        raise RqsidError(f"SID file {path} lacks the columns {missing} (it has {arrow.column_names})")
    codes = np.zeros((arrow.num_rows, len(level_sizes)), dtype=np.int64)
    for level in range(len(level_sizes)):
        codes[:, level] = _int_column(arrow, f"c{level + 1}")
    dedup = _int_column(arrow, "dedup")
    item_ids = np.asarray(arrow.column("item_id").to_pylist(), dtype=object)
    _check_ids(item_ids, f"SID file {path}")
    return SidTable(item_ids, codes, dedup, level_sizes, pruning)


def _check_ids(item_ids: np.ndarray, what: str) -> None:
    """Every SID names one item: no empty ids, no id twice."""
    missing = np.flatnonzero([i is None or i == "" for i in item_ids])
    if len(missing):
        raise RqsidError(f"{what}: {len(missing)} rows without item_id (rows {missing[:5].tolist()})")
    if len(set(item_ids)) < len(item_ids):  # a set is much faster than sorting 1M strings
        ids, counts = np.unique(item_ids.astype(str), return_counts=True)
        raise RqsidError(f"{what}: duplicate item ids {ids[counts > 1][:5].tolist()}")


def _parse_reference_tokens(key: str, tokens: list[str]) -> list[int]:
    parsed = [REFERENCE_TOKEN.match(token) for token in tokens]
    if not all(parsed) or [m.group(1) for m in parsed] != [chr(ord("a") + i) for i in range(len(tokens))]:
        raise RqsidError(f"reference item {key!r}: tokens {tokens} are not <a_N>, <b_N>, ... in level order")
    return [int(m.group(2)) for m in parsed]


def load_reference_index(path: str | Path, id_offset: int = 0, min_level_size: int = 256) -> SidTable:
    """A public `*.index.json` ({"0": ["<a_183>", "<b_70>", ...]}) as a SidTable.

    Keys are 0-based ints; item id = str(key + id_offset) (Beauty's P5 ids need id_offset=1).
    Every given level is kept (the last is often already a dedup-like level); a level's size is
    `min_level_size` unless a code exceeds it. Our own dedup tokens are added where paths still collide.
    """
    path = Path(path)
    if not path.exists():
        raise RqsidError(f"reference index not found: {path}")
    try:
        raw: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RqsidError(f"reference index {path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise RqsidError(f"reference index {path} is empty or not an object of item -> token list")
    bad = [key for key, tokens in raw.items()
           if not key.isdigit() or not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)]
    if bad:
        raise RqsidError(f"reference index {path}: {len(bad)} entries are not 0-based int keys with token lists "
                         f"(first {bad[:5]})")
    keys = sorted(raw, key=int)
    rows = [_parse_reference_tokens(key, raw[key]) for key in keys]
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise RqsidError(f"reference index {path}: items have different numbers of levels {sorted(lengths)}")
    codes = np.asarray(rows, dtype=np.int64)
    level_sizes = [max(min_level_size, int(codes[:, level].max()) + 1) for level in range(codes.shape[1])]
    item_ids = [str(int(key) + id_offset) for key in keys]
    return assign_sids(item_ids, codes, level_sizes)


def load_sids(path: str | Path, id_offset: int = 0) -> SidTable:
    """Our SID parquet, or a reference `*.index.json` (id_offset applies to the latter only)."""
    path = Path(path)
    if path.name.endswith(".json"):
        return load_reference_index(path, id_offset=id_offset)
    return read_sids(path)
