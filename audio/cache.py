"""Content-addressed media cache and the render index on top of it.

Media files are named ``<sha256>.<ext>`` after their encoded bytes, so identical audio is
stored once and a cluster can verify what it downloaded. The render index maps a hash of
*what was asked for* (input + settings + engine) to the media it produced, so the same
request renders once. Recency of use is the file's mtime, refreshed on every hit
(atime is unreliable on noatime/relatime mounts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MEDIA_RE = re.compile(r"^([0-9a-f]{64})\.([a-z0-9]+)$")
INDEX_DIR = ".renders"


def render_key(parts: dict[str, Any]) -> str:
    """Stable hash of a JSON-ready description of a render request."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    sha256: str
    path: Path
    size: int
    last_used: float


@dataclass(frozen=True)
class PruneResult:
    evicted: list[str]
    freed_bytes: int
    total_bytes: int
    """Bytes still in the cache after pruning (may exceed the limit if ``keep`` does)."""


class MediaCache:
    """A directory of ``<sha256>.<ext>`` media files bounded to ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def entries(self) -> list[CacheEntry]:
        """Every media file, least recently used first."""
        out: list[CacheEntry] = []
        if not self.directory.is_dir():
            return out
        for path in self.directory.iterdir():
            match = _MEDIA_RE.match(path.name)
            if not match or not path.is_file():
                continue
            st = path.stat()
            out.append(CacheEntry(match.group(1), path, st.st_size, st.st_mtime))
        out.sort(key=lambda e: (e.last_used, e.sha256))
        return out

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def find(self, sha256: str) -> Path | None:
        """The media file with this hash, if cached."""
        for e in self.entries():
            if e.sha256 == sha256:
                return e.path
        return None

    def touch(self, sha256: str) -> bool:
        """Mark a file as just used (e.g. when a cluster downloads it). False if absent."""
        path = self.find(sha256)
        if path is None:
            return False
        os.utime(path)
        return True

    def prune(self, keep: set[str]) -> PruneResult:
        """Evict least recently used files not in ``keep`` until under ``max_bytes``.

        Files in ``keep`` (media that schedules still need) are never evicted, even when
        they alone exceed the limit; that case is logged.
        """
        entries = self.entries()
        total = sum(e.size for e in entries)
        evicted: list[str] = []
        freed = 0
        for e in entries:
            if total <= self.max_bytes:
                break
            if e.sha256 in keep:
                continue
            e.path.unlink(missing_ok=True)
            total -= e.size
            freed += e.size
            evicted.append(e.sha256)
            logger.info("evicted %s (%d bytes) from media cache", e.path.name, e.size)
        if total > self.max_bytes:
            logger.warning(
                "media cache holds %d bytes of needed media, over its %d-byte limit",
                total,
                self.max_bytes,
            )
        return PruneResult(evicted=evicted, freed_bytes=freed, total_bytes=total)


class RenderIndex:
    """Maps render keys to the metadata of the media they produced."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.directory = self.cache_dir / INDEX_DIR

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record, or None when absent or when its media file is gone."""
        path = self.directory / f"{key}.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable render index entry %s: %s", path, exc)
            return None
        media = self.cache_dir / str(record.get("file", ""))
        try:
            size = media.stat().st_size
        except OSError:
            size = -1
        if size != record.get("size"):
            # Evicted by MediaCache.prune or tampered with: render again.
            path.unlink(missing_ok=True)
            return None
        os.utime(media)
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{key}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, ensure_ascii=False, sort_keys=True), "utf-8")
        tmp.replace(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
