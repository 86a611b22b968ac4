"""Versioned artifacts: content hashes, version ids, an on-disk version store, atomic publication of
index versions, and SIDs that stay stable across re-indexing.

An artifact's version id is a hash of its inputs' version ids and the config that produced it, so a
rerun with the same inputs finds the artifact on disk and reuses it (across processes: the store is
plain folders). Artifacts appear atomically: they are written to a temporary folder beside their
final place and renamed into it, so a crash never leaves a half-written version that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rqsid import RqsidError

HASH_CHARS = 16
MANIFEST = "manifest.json"
CONTENT_FIELDS = ("title", "brand", "categories", "description", "extra")


# ---------------------------------------------------------------- hashes and version ids


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # pydantic config sections
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot hash a {type(value).__name__}")


def stable_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ("ab","c") != ("a","bc")
        h.update(data)
    return h.hexdigest()[:HASH_CHARS]


def version_id(kind: str, inputs: Mapping[str, str | None], config: Any = None) -> str:
    """`<kind>-<hash>` of the input version ids and the config that produced the artifact."""
    return f"{kind}-{digest(stable_json({'kind': kind, 'inputs': dict(inputs), 'config': config}))}"


def item_content_hashes(catalog: pa.Table) -> np.ndarray:
    """One short hash per item of the text that is embedded (title, brand, categories, description,
    extra): an item whose hash is unchanged needs no new embedding nor a new SID."""
    parts = []
    for name in CONTENT_FIELDS:
        column = catalog.column(name)
        if pa.types.is_list(column.type):
            column = pc.binary_join(pc.fill_null(column, pa.scalar([], column.type)), "\x1e")
        parts.append(pc.fill_null(column, "\x00"))  # null differs from ""
    joined = pc.binary_join_element_wise(*parts, "\x1f").to_pylist()
    return np.array([hashlib.blake2b(t.encode(), digest_size=HASH_CHARS // 2).hexdigest() for t in joined], dtype=object)


def catalog_version(item_ids: np.ndarray, content_hashes: np.ndarray) -> str:
    """Version id of a catalog: its set of (item id, content hash) pairs, independent of row order."""
    ids = np.asarray(item_ids, dtype=str)
    order = np.argsort(ids, kind="stable")
    lines = "\n".join(f"{i}\t{h}" for i, h in zip(ids[order], np.asarray(content_hashes)[order]))
    return f"catalog-{digest(lines)}"


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:HASH_CHARS]


# ---------------------------------------------------------------- the version store


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=_jsonable))
    os.replace(tmp, path)


@dataclass(frozen=True)
class Artifact:
    kind: str
    version: str
    path: Path
    reused: bool

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


@dataclass(frozen=True)
class VersionStore:
    """Folders `<root>/<kind>/<version>/` each with a manifest.json; a version exists once renamed in."""

    root: Path

    def path(self, kind: str, version: str) -> Path:
        return Path(self.root) / kind / version

    def exists(self, kind: str, version: str) -> bool:
        return (self.path(kind, version) / MANIFEST).is_file()

    def get(self, kind: str, version: str) -> Artifact:
        if not self.exists(kind, version):
            raise RqsidError(f"{kind} version {version} not found under {self.root}")
        return Artifact(kind, version, self.path(kind, version), reused=True)

    def versions(self, kind: str) -> list[str]:
        folder = Path(self.root) / kind
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if (p / MANIFEST).is_file()]
        return [p.name for p in sorted(found, key=lambda p: (p / MANIFEST).stat().st_mtime)]

    @contextmanager
    def staging(self, kind: str, version: str) -> Iterator[Path]:
        """A temporary folder beside the final one; the caller fills it, we write the manifest last and
        rename it into place. If another process got there first, its copy wins and ours is dropped."""
        final = self.path(kind, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
        try:
            yield tmp
            if not (tmp / MANIFEST).exists():
                _write_json_atomic(tmp / MANIFEST, {"kind": kind, "version": version, "created": time.time()})
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(kind, version):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def get_or_create(
        self, kind: str, version: str, build: Callable[[Path], Mapping[str, Any]]
    ) -> Artifact:
        """The stored artifact if this version exists; else `build(folder) -> manifest fields`, stored."""
        if self.exists(kind, version):
            return self.get(kind, version)
        with self.staging(kind, version) as folder:
            fields = dict(build(folder) or {})
            _write_json_atomic(folder / MANIFEST, {"kind": kind, "version": version, "created": time.time(), **fields})
        return Artifact(kind, version, self.path(kind, version), reused=False)


# ---------------------------------------------------------------- published index versions


@dataclass(frozen=True)
class IndexRegistry:
    """Published index versions of one catalog: `<root>/versions/<version>/` and a pointer file
    `<root>/current` naming the version in service. Both change by atomic renames only."""

    root: Path

    @property
    def store(self) -> VersionStore:
        return VersionStore(Path(self.root))

    @property
    def pointer(self) -> Path:
        return Path(self.root) / "current"

    def current(self) -> str | None:
        if not self.pointer.is_file():
            return None
        version = self.pointer.read_text().strip()
        return version if self.store.exists("versions", version) else None

    def current_path(self) -> Path | None:
        version = self.current()
        return self.store.path("versions", version) if version else None

    def path(self, version: str) -> Path:
        return self.store.get("versions", version).path

    def versions(self) -> list[str]:
        return self.store.versions("versions")

    def publish(self, version: str, build: Callable[[Path], Mapping[str, Any]]) -> Artifact:
        """Write the version (unless it exists) then point `current` at it; readers see the old
        version or the new one, never a mixture."""
        artifact = self.store.get_or_create("versions", version, build)
        self.set_current(version)
        return artifact

    def set_current(self, version: str) -> None:
        if not self.store.exists("versions", version):
            raise RqsidError(f"index version {version} does not exist under {self.root}")
        tmp = self.pointer.with_name(f".current.{os.getpid()}.tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, self.pointer)


# ---------------------------------------------------------------- stable SIDs across versions


def positions(keys: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row of each key in `reference` (unique), -1 where absent."""
    keys = np.asarray(keys, dtype=str)
    reference = np.asarray(reference, dtype=str)
    if len(reference) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    order = np.argsort(reference, kind="stable")
    slot = np.searchsorted(reference[order], keys).clip(max=len(reference) - 1)
    found = reference[order][slot] == keys
    return np.where(found, order[slot], -1).astype(np.int64)


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


def stable_dedup(kept_codes: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Dedup tokens for items that share their whole kept code path, reusing `prior` (an item's dedup
    token in the previous version, -1 if none or if its path changed) wherever it is still free within
    the item's collision group; the others get the smallest free numbers in item order. Unique items
    get -1, as in `rqsid.sids`."""
    n = len(kept_codes)
    dedup = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return dedup
    _, group, size = np.unique(kept_codes, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    colliding = np.flatnonzero(size[group] > 1)
    order = colliding[np.argsort(group[colliding], kind="stable")]
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    # Collision groups are few and small (the gate bounds the collision rate): a loop over groups.
    for members in np.split(order, bounds) if len(order) else []:
        wanted = prior[members]
        taken: set[int] = set()
        for pos, token in enumerate(wanted):
            if token >= 0 and token not in taken and token < len(members):
                dedup[members[pos]] = token
                taken.add(int(token))
        free = iter(t for t in range(len(members)) if t not in taken)
        for m in members[dedup[members] < 0]:
            dedup[m] = next(free)
    return dedup


def changed_sid_count(prev_ids, prev_tokens: np.ndarray, ids, tokens: np.ndarray) -> dict[str, int]:
    """How many items present in both versions have a different token sequence (SID)."""
    row = positions(ids, prev_ids)
    both = np.flatnonzero(row >= 0)
    width = max(prev_tokens.shape[1], tokens.shape[1])
    a = np.pad(prev_tokens, ((0, 0), (0, width - prev_tokens.shape[1])), constant_values=-1)[row[both]]
    b = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=-1)[both]
    changed = int((a != b).any(axis=1).sum())
    return {"items_in_both": len(both), "sids_changed": changed, "sids_kept": len(both) - changed}
