"""Versioned artifacts: content hashes, version ids, an on-disk version store, and atomic publication of
index versions (what an index version holds, and how SIDs stay stable across them: rqsid.index).

An artifact's version id is a hash of its inputs' version ids and the config that produced it, so a
rerun with the same inputs finds the artifact on disk and reuses it (across processes: the store is
plain folders). Artifacts appear atomically: they are written to a temporary folder beside their
final place and renamed into it, so a crash never leaves a half-written version that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rqsid import RqsidError
from rqsid.checkpoints import reach
from rqsid.jsonio import to_jsonable, write_json_atomic
from rqsid.locks import try_lock

HASH_CHARS = 16
MANIFEST = "manifest.json"
CONTENT_FIELDS = ("title", "brand", "categories", "description", "extra")


# ---------------------------------------------------------------- hashes and version ids


def stable_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=to_jsonable)


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
    lines = "\n".join(f"{i}\t{h}" for i, h in zip(ids[order], np.asarray(content_hashes)[order], strict=True))
    return f"catalog-{digest(lines)}"


def interactions_version(interactions: pa.Table) -> str:
    """A cheap identity of interactions: their (user, seq) keys, with each row's item as its 'content'."""
    users = interactions.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    seqs = interactions.column("seq").to_numpy().astype(str)
    keys = np.char.add(np.char.add(users, "\x1f"), seqs)
    return catalog_version(keys, interactions.column("item_id").to_numpy(zero_copy_only=False))


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:HASH_CHARS]


# ---------------------------------------------------------------- the version store

STAGING_SUFFIX = ".staging-lock"


def _claim_staging(parent: Path, version: str) -> tuple[Path, int]:
    """A new folder `.<version>.<random>` and its lock file, locked before the folder exists, so a staging
    folder is always either locked by the live process filling it or abandoned."""
    while True:
        name = f".{version}.{secrets.token_hex(4)}"
        try:
            fd = os.open(parent / f"{name}{STAGING_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        if not try_lock(fd):  # just created under a random name: cannot be held elsewhere
            os.close(fd)
            continue
        (parent / name).mkdir()
        return parent / name, fd


def _open_existing(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None


def _release_staging(folder: Path, fd: int) -> None:
    folder.with_name(folder.name + STAGING_SUFFIX).unlink(missing_ok=True)
    os.close(fd)


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
        rename it into place. If another process got there first, its copy wins and ours is dropped.
        While it is filled, its lock file is held: `clean_staging` removes only folders whose lock is free."""
        final = self.path(kind, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp, lock = _claim_staging(final.parent, version)
        try:
            yield tmp
            if not (tmp / MANIFEST).exists():
                write_json_atomic(tmp / MANIFEST, {"kind": kind, "version": version, "created": time.time()})
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(kind, version):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            _release_staging(tmp, lock)

    def clean_staging(self) -> list[Path]:
        """Remove the half-built staging folders that dead processes left (SIGKILL, power loss); a folder
        that a live process is filling stays (its lock file is held). Returns the folders removed."""
        removed = []
        for folder in sorted(p for p in Path(self.root).glob("*/.*") if p.is_dir()):
            lock = folder.with_name(folder.name + STAGING_SUFFIX)
            fd = _open_existing(lock)
            try:
                if fd is not None and not try_lock(fd):
                    continue  # its process is alive and filling it
                shutil.rmtree(folder, ignore_errors=True)  # no lock file: made before locks, or being released
                lock.unlink(missing_ok=True)
                removed.append(folder)
            finally:
                if fd is not None:
                    os.close(fd)
        return removed

    def get_or_create(
        self, kind: str, version: str, build: Callable[[Path], Mapping[str, Any]]
    ) -> Artifact:
        """The stored artifact if this version exists; else `build(folder) -> manifest fields`, stored."""
        if self.exists(kind, version):
            return self.get(kind, version)
        with self.staging(kind, version) as folder:
            fields = dict(build(folder) or {})
            write_json_atomic(folder / MANIFEST, {"kind": kind, "version": version, "created": time.time(), **fields})
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
        reach("current")
        self.set_current(version)
        return artifact

    def set_current(self, version: str) -> None:
        if not self.store.exists("versions", version):
            raise RqsidError(f"index version {version} does not exist under {self.root}")
        tmp = self.pointer.with_name(f".current.{os.getpid()}.tmp")
        tmp.write_text(version + "\n")
        os.replace(tmp, self.pointer)
