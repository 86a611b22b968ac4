"""A published index version on disk, and SIDs that stay stable from one version to the next.

An index version folder holds `sids.parquet` (the final SIDs), `codes.parquet` (item_id, content_hash
and the raw, unpruned codes c1..cL), `trie.npz` (the SidTrie of the final SIDs), `report.json`,
`gates.json`, `prune_trace.json`, `tokenizer/` (a copy) and `manifest.json`. `write_index_files`
writes them; `IndexSnapshot.load` reads what a later re-index needs back.

Stable SIDs: while the published tokenizer is reused, unchanged items keep their codes (`carry_codes`),
the published pruning and their dedup numbers (`stable_dedup`, `stable_table`), and
`changed_sid_count` says how many SIDs moved anyway.

What a served generator needs of an index besides its SIDs: its items' text embeddings
(`item_embeddings`) and titles (`item_titles`), in SID-table row order.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rqsid import RqsidError
from rqsid.drift import apply_removed_tokens
from rqsid.embed import read_embeddings
from rqsid.jsonio import read_json, write_json
from rqsid.lookup import align_embeddings, positions
from rqsid.metrics import balance_summary
from rqsid.sids import SidTable, assign_sids, neutral_keys, read_sids, write_sids
from rqsid.trie import SidTrie
from rqsid.versioning import IndexRegistry, VersionStore

MANIFEST = "manifest.json"


def index_manifest(index_dir: Path) -> dict[str, Any]:
    return read_json(Path(index_dir) / MANIFEST)


def read_index_sids(index_dir: Path) -> SidTable:
    return read_sids(Path(index_dir) / "sids.parquet")


def write_codes(path: Path, item_ids: np.ndarray, hashes: np.ndarray, codes: np.ndarray) -> Path:
    """The raw codes with each item's content hash: what drift and stable SIDs compare against."""
    columns = {"item_id": pa.array(np.asarray(item_ids).astype(str)), "content_hash": pa.array(np.asarray(hashes).astype(str))}
    for level in range(codes.shape[1]):
        columns[f"c{level + 1}"] = pa.array(codes[:, level].astype(np.int32))
    pq.write_table(pa.table(columns), path)
    return path


def write_index_files(folder: Path, table: SidTable, item_ids: np.ndarray, hashes: np.ndarray, codes: np.ndarray,
                      report: dict, gates: list[dict], prune_trace: list[dict], tokenizer_dir: Path) -> None:
    """Everything of an index version but its manifest, into `folder` (a staging folder of the registry)."""
    folder = Path(folder)
    write_sids(folder / "sids.parquet", table)
    write_codes(folder / "codes.parquet", item_ids, hashes, codes)
    SidTrie.build(table.token_matrix(), table.vocab_size).save(folder / "trie.npz")
    write_json(folder / "report.json", report)
    write_json(folder / "gates.json", gates)
    write_json(folder / "prune_trace.json", prune_trace)
    shutil.copytree(tokenizer_dir, folder / "tokenizer")


@dataclass
class IndexSnapshot:
    """What a published index knows about its items: raw codes, content hashes, SIDs, pruning."""

    path: Path
    manifest: dict
    item_ids: np.ndarray
    hashes: np.ndarray
    codes: np.ndarray  # raw (unpruned) codes
    sids: SidTable

    @classmethod
    def load(cls, path: Path) -> IndexSnapshot:
        path = Path(path)
        manifest = index_manifest(path)
        table = pq.read_table(path / "codes.parquet")
        levels = len(manifest["level_sizes"])
        codes = np.stack([table.column(f"c{n + 1}").to_numpy() for n in range(levels)], axis=1).astype(np.int64)
        column = lambda name: table.column(name).to_numpy(zero_copy_only=False).astype(object)  # noqa: E731
        return cls(path, manifest, column("item_id"), column("content_hash"), codes, read_index_sids(path))

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def removed(self) -> dict[int, list[int]]:
        return self.sids.removed_codes()

    def unpruned(self) -> SidTable:
        """The SIDs before pruning (the head/tail split of the generator's evaluation reads these)."""
        return assign_sids(self.item_ids, self.codes, self.manifest["level_sizes"])

    def trie(self) -> SidTrie:
        return SidTrie.load(self.path / "trie.npz")


# ---------------------------------------------------------------- stable SIDs across versions


@dataclass(frozen=True)
class ItemDelta:
    """How today's items relate to a previous version's: `prev_row[i]` is item i's row there when its
    content is unchanged (-1 for new or changed items)."""

    prev_row: np.ndarray
    n_new: int
    n_changed: int
    n_removed: int

    @property
    def unchanged(self) -> np.ndarray:
        return self.prev_row >= 0

    @property
    def n_unchanged(self) -> int:
        return int(self.unchanged.sum())

    @property
    def new_or_changed_share(self) -> float:
        return (self.n_new + self.n_changed) / max(len(self.prev_row), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_items": len(self.prev_row),
            "n_unchanged": self.n_unchanged,
            "n_new": self.n_new,
            "n_changed": self.n_changed,
            "n_removed": self.n_removed,
            "new_or_changed_share": self.new_or_changed_share,
        }


def item_delta(prev_ids, prev_hashes, ids, hashes) -> ItemDelta:
    row = positions(ids, prev_ids)
    known = row >= 0
    same = np.zeros(len(row), dtype=bool)
    same[known] = np.asarray(prev_hashes, dtype=object)[row[known]] == np.asarray(hashes, dtype=object)[known]
    n_removed = int((positions(prev_ids, ids) < 0).sum())
    return ItemDelta(np.where(same, row, -1), int((~known).sum()), int((known & ~same).sum()), n_removed)


def carry_codes(prev_codes: np.ndarray, delta: ItemDelta, new_codes: np.ndarray) -> np.ndarray:
    """Full code matrix for today's items: unchanged items keep their previous codes; the rest take
    `new_codes`, given in item order for exactly the items where `delta.unchanged` is False."""
    keep = delta.unchanged
    if len(new_codes) != int((~keep).sum()):
        raise RqsidError(f"{len(new_codes)} new codes for {int((~keep).sum())} new or changed items")
    codes = np.empty((len(keep), prev_codes.shape[1]), dtype=np.int64)
    codes[keep] = prev_codes[delta.prev_row[keep]]
    codes[~keep] = new_codes
    return codes


KEEP_NO_DEDUP = -2  # `prior` of an item that was alone on the same path: it keeps its SID without a dedup token


def stable_dedup(kept_codes: np.ndarray, prior: np.ndarray, item_ids) -> np.ndarray:
    """Dedup tokens for items that share their whole kept code path, reusing `prior` (an item's dedup
    token in the previous version; -1 if new or if its path changed; KEEP_NO_DEDUP if it had the path to
    itself) wherever it is still free within the item's collision group; the others get the smallest free
    numbers in the order of their `neutral_keys` (never id order, which can carry time). Unique items get
    -1, as in `rqsid.sids`.

    An item that had its path to itself keeps its SID (no dedup token) when new items join the path: the
    newcomers take the dedup tokens. Every old SID then survives a re-index that only adds items, so a
    generator trained on yesterday's index can serve today's (`rqsid.generator.retriever.bind`); its SID
    and theirs differ by the dedup token before the end token."""
    n = len(kept_codes)
    dedup = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return dedup
    _, group, size = np.unique(kept_codes, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    colliding = np.flatnonzero(size[group] > 1)
    tie = neutral_keys([item_ids[i] for i in colliding])
    order = colliding[np.lexsort((tie, group[colliding]))]
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    # Collision groups are few and small (the gate bounds the collision rate): a loop over groups.
    for members in np.split(order, bounds) if len(order) else []:
        wanted = prior[members]
        taken: set[int] = set()
        for pos, token in enumerate(wanted):
            if token >= 0 and token not in taken and token < len(members):
                dedup[members[pos]] = token
                taken.add(int(token))
        alone_before = members[wanted == KEEP_NO_DEDUP][:1]  # (two such items cannot share a path)
        free = iter(t for t in range(len(members)) if t not in taken)
        for m in members[dedup[members] < 0]:
            if m not in alone_before:
                dedup[m] = next(free)
    return dedup


def stable_table(ids: np.ndarray, codes: np.ndarray, sizes: list[int], base: IndexSnapshot, level: int) -> SidTable:
    """Today's SIDs under the published pruning: pruned tokens and dedup numbers carried over."""
    kept = apply_removed_tokens(codes, level, base.removed.get(level, []))
    prev_row = positions(ids, base.sids.item_ids)
    present = prev_row >= 0
    same_path = present.copy()
    same_path[present] = (base.sids.codes[prev_row[present]] == kept[present]).all(axis=1)
    prior = np.full(len(ids), -1, dtype=np.int64)
    before = base.sids.dedup[prev_row[same_path]]
    prior[same_path] = np.where(before >= 0, before, KEEP_NO_DEDUP)
    return SidTable(ids, kept, stable_dedup(kept, prior, ids), tuple(sizes), base.sids.pruning)


def changed_sid_count(prev_ids, prev_tokens: np.ndarray, ids, tokens: np.ndarray) -> dict[str, int]:
    """How many items present in both versions have a different token sequence (SID)."""
    row = positions(ids, prev_ids)
    both = np.flatnonzero(row >= 0)
    width = max(prev_tokens.shape[1], tokens.shape[1])
    a = np.pad(prev_tokens, ((0, 0), (0, width - prev_tokens.shape[1])), constant_values=-1)[row[both]]
    b = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=-1)[both]
    changed = int((a != b).any(axis=1).sum())
    return {"items_in_both": len(both), "sids_changed": changed, "sids_kept": len(both) - changed}


# ---------------------------------------------------------------- what a served model needs of an index


def item_embeddings(index_dir: Path, store: VersionStore) -> np.ndarray:
    """The text embeddings of the index's items (its embeddings version), in its SID table's row order:
    the item features of a generator that composes item vectors from text."""
    version = index_manifest(index_dir)["versions"]["embeddings"]
    path = store.get("embeddings", version).path / "embeddings.parquet"
    emb_ids, X = read_embeddings(path)
    return align_embeddings(read_index_sids(index_dir).item_ids, emb_ids, X, str(path))


def item_titles(index_dir: Path, store: VersionStore) -> np.ndarray:
    """The titles of the index's items (from the catalog version it was built from), in SID-table row order."""
    catalog = pq.read_table(store.get("catalog", index_manifest(index_dir)["versions"]["catalog"]).path / "catalog.parquet",
                            columns=["item_id", "title"])
    titles = np.asarray(catalog.column("title").to_pylist(), dtype=object)
    rows = positions(read_index_sids(index_dir).item_ids, catalog.column("item_id").to_numpy(zero_copy_only=False))
    return np.where(rows >= 0, titles[np.maximum(rows, 0)], "")


def balance_trend(registry: IndexRegistry, last: int) -> list[dict[str, Any]]:
    """Per-layer Gini and normalised entropy of a registry's last `last` index versions, oldest first, each
    with its layers before pruning where the manifest kept them (points for `rqsid.plots.trend_figure`)."""
    points = []
    for version in registry.versions()[-last:]:
        folder = registry.path(version)
        manifest = index_manifest(folder)
        created = time.strftime("%m-%d %H:%M", time.gmtime(manifest.get("created", 0)))
        points.append({
            "version": version,
            "label": f"{version.removeprefix('index-')[:8]} {created}",
            "layers": balance_summary(read_json(folder / "report.json"))["layers"],
            "unpruned": (manifest.get("unpruned") or {}).get("layers"),
        })
    return points
