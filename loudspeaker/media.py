"""Content-addressed announcement audio and the HTTP server clusters fetch it from.

Files are named by the sha256 of their bytes, so a URL never changes meaning and a
cluster can verify what it downloaded. The same server takes the CLI's "wake up" pokes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from loudspeaker.exceptions import LoudspeakerError

logger = logging.getLogger(__name__)

_MEDIA_PATH = re.compile(r"^/media/([0-9a-f]{64})(?:\.[a-z0-9]{2,5})?$")


class MediaStore:
    """Audio files under ``root``, named ``<sha256>.<ext>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path | None:
        """The stored file for ``sha256``, or None."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            return None
        for candidate in self.root.glob(f"{sha256}.*"):
            if candidate.suffix not in (".part", ".tmp"):
                return candidate
        return None

    def add_file(self, path: Path, ext: str) -> tuple[str, int]:
        """Copy ``path`` into the store atomically; return its sha256 and size."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 16):
                digest.update(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        target = self.root / f"{sha}.{ext}"
        if path.resolve() == target.resolve() or target.exists():
            return sha, size
        tmp = self.root / f"{sha}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise LoudspeakerError(
                f"cannot store audio in {self.root}: {exc} (is the disk full?)"
            ) from None
        return sha, size


class _Handler(BaseHTTPRequestHandler):
    server: MediaServer._Server

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("http %s: %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(HTTPStatus.OK, b"ok\n")
            return
        if self.path == "/metrics" and self.server.metrics is not None:
            self._metrics()
            return
        self._serve(body=True)

    def do_POST(self) -> None:
        if self.path == "/api/poke":
            self.server.on_poke()
            self._reply(HTTPStatus.NO_CONTENT, b"")
            return
        self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

    def _metrics(self) -> None:
        assert self.server.metrics is not None
        try:
            body = self.server.metrics().encode()
        except Exception:
            # A scrape must never take the media server down with it.
            logger.exception("metrics collection failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"metrics unavailable\n")
            return
        self._reply(HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8")

    def _reply(self, status: HTTPStatus, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, *, body: bool) -> None:
        m = _MEDIA_PATH.match(self.path)
        path = self.server.store.path_for(m.group(1)) if m else None
        if path is None:
            self._reply(HTTPStatus.NOT_FOUND, b"no such media\n")
            return
        size = path.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "audio/mpeg" if path.suffix == ".mp3" else "audio/ogg")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.end_headers()
        if body:
            with path.open("rb") as fh:
                try:
                    shutil.copyfileobj(fh, self.wfile, 1 << 16)
                except (BrokenPipeError, ConnectionResetError):
                    logger.info("client went away while fetching %s", path.name)


class MediaServer:
    """Serves ``GET /media/<sha256>[.ext]``, ``GET /healthz`` and ``POST /api/poke``."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's default backlog is 5: when a broadcast makes a thousand clusters
        # fetch at once, the rest of the SYNs are dropped and retried after 1, 3, 7 s.
        request_queue_size = 4096
        store: MediaStore
        on_poke: Callable[[], None]
        metrics: Callable[[], str] | None = None

    def __init__(
        self,
        store: MediaStore,
        host: str,
        port: int,
        on_poke: Callable[[], None],
        metrics: Callable[[], str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.host = host
        self.port = port
        self.on_poke = on_poke
        self._server: MediaServer._Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a background thread."""
        try:
            server = MediaServer._Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise LoudspeakerError(
                f"cannot serve media on {self.host}:{self.port}: {exc} "
                "(another controller running? choose --http-port)"
            ) from None
        server.store = self.store
        server.on_poke = self.on_poke
        server.metrics = self.metrics
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="media-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
