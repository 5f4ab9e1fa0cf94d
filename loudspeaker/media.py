"""Content-addressed announcement audio and the HTTP server clusters fetch it from.

Files are named by the sha256 of their bytes, so a URL never changes meaning and a
cluster can verify what it downloaded. The same server takes the CLI's "wake up" pokes.

The server is one asyncio loop in one thread (docs/architecture.md, "Media server"): an
idle or trickling connection costs a socket and a few hundred bytes, never a thread. Each
connection has a deadline for its request head and one for every write; the number of
connections is capped (media_slots.py decides who gets a slot when full); what does not fit
is refused at once with 503. ``/metrics`` and ``/api/poke`` answer only the admin
addresses (loopback and this host's own address by default; docs/security.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.media_policy import MediaLimits, is_admin
from loudspeaker.media_slots import Slot, SlotTable
from loudspeaker.throttled_log import Throttle

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


_HEAD_LIMIT = 8192
# socketserver's default backlog was 5: when a broadcast makes a thousand clusters fetch
# at once, the rest of the SYNs were dropped and retried after 1, 3, 7 s.
_LISTEN_BACKLOG = 4096
_ACCEPT_BURST = 32
_CHUNK = 1 << 16
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class _Reply(Exception):
    """Answer ``status`` with ``body`` and close (raised from deep in a request)."""

    def __init__(self, status: HTTPStatus, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _Conn(asyncio.StreamReaderProtocol):
    """One connection: admitted (or refused) the moment it is accepted, and marked as
    having sent its request head the moment those bytes arrive, before any task runs:
    a box's request is never the one evicted while it waits for the loop to read it."""

    # Set by ``_Http.serve`` before any request is read.
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __init__(self, http: _Http) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(
            asyncio.StreamReader(limit=_HEAD_LIMIT, loop=loop),
            lambda r, w: http.serve(self, r, w),
            loop=loop,
        )
        self.http = http
        self.peer = "unknown"
        self.slot: Slot[_Conn] | None = None
        self._tail = b""
        self._transport_ref: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport_ref = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self.slot = self.http.admit(self)
        if self.slot is None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.slot is not None and not self.slot.head_done:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self.slot.head_done = True
            self._tail = seen[-3:]
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:
            self.http.slots.release(self.slot)
        super().connection_lost(exc)

    def abort(self) -> None:
        if self._transport_ref is not None:
            self._transport_ref.abort()  # type: ignore[attr-defined]


class _Http:
    """The asyncio side of :class:`MediaServer` (runs only in the server's thread)."""

    def __init__(self, media: MediaServer) -> None:
        self.media = media
        self.limits = media.limits
        self.slots: SlotTable[_Conn] = SlotTable(media.limits.max_connections)
        self.server: asyncio.Server | None = None
        # The request tasks, so stop() can cancel and await them: a task still running
        # when the loop closes would be destroyed pending, mid-write.
        self.tasks: set[asyncio.Task[None]] = set()
        # File look-ups, opens and reads and the database check leave the loop: a slow
        # disk or a busy database delays that request, never the others.
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="media-io")
        self._reported = (0, 0)
        self._pressure = Throttle()

    async def start(self, host: str, port: int) -> int:
        family, _t, _p, _n, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.create_server(addr, family=family, backlog=_LISTEN_BACKLOG)
        loop = asyncio.get_running_loop()
        # asyncio accepts up to ``backlog`` connections per loop turn, each an open socket
        # before any protocol code sees it: a flood would open thousands at once (EMFILE)
        # and evict a box's connection before its request was even read. So asyncio gets
        # a small burst, and the kernel keeps the long queue a fleet-wide fetch needs.
        self.server = await loop.create_server(
            lambda: _Conn(self), sock=sock, backlog=_ACCEPT_BURST, start_serving=False
        )
        await self.server.start_serving()
        sock.listen(_LISTEN_BACKLOG)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for every request to end."""
        if self.server is not None:
            self.server.close()
        for conn in self.slots.handles():
            conn.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    def admit(self, conn: _Conn) -> Slot[_Conn] | None:
        """A slot for a just-accepted connection (evicting a waiting one), or None."""
        slot, victim = self.slots.admit(conn.peer, conn)
        if victim is not None:
            victim.handle.abort()
        if victim is not None or slot is None:
            self._report_pressure()
        return slot

    async def serve(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer one request on an admitted connection, then close it."""
        conn.reader, conn.writer = reader, writer
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self._serve(conn)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            conn.abort()
        except asyncio.CancelledError:
            # Only stop() cancels a request. Ending quietly rather than re-raising: asyncio's
            # streams callback logs a cancelled connection task as an error.
            conn.abort()
        except Exception:
            # Nothing one client does may take the server down.
            logger.exception("media request from %s failed", conn.peer)
            conn.abort()
        finally:
            if task is not None:
                self.tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.close()

    def _report_pressure(self) -> None:
        # One warning per 10 s at most, with counts: an attack must not flood the log.
        if not self._pressure.tick():
            return
        ev, rf = self.slots.evicted, self.slots.refused
        logger.warning(
            "media server full (%d connections): %d waiting connections dropped and %d "
            "refused since the last report",
            self.limits.max_connections,
            ev - self._reported[0],
            rf - self._reported[1],
        )
        self._reported = (ev, rf)

    async def _serve(self, conn: _Conn) -> None:
        try:
            head = await asyncio.wait_for(
                conn.reader.readuntil(b"\r\n\r\n"), self.limits.header_timeout_s
            )
        except asyncio.LimitOverrunError:
            await self._send(conn, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"too large\n")
            return
        assert conn.slot is not None
        conn.slot.head_done = True
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        except ValueError:
            await self._send(conn, HTTPStatus.BAD_REQUEST, b"bad request\n")
            return
        try:
            await self._route(conn, method, target.split("?", 1)[0])
        except _Reply as reply:
            await self._send(conn, reply.status, reply.body, head_only=method == "HEAD")

    async def _route(self, conn: _Conn, method: str, path: str) -> None:
        if path == "/healthz" and method in ("GET", "HEAD"):
            raise _Reply(HTTPStatus.OK, b"ok\n")
        if path in ("/metrics", "/api/poke"):
            local = conn.writer.get_extra_info("sockname")
            local_ip = str(local[0]) if isinstance(local, tuple) else ""
            if not is_admin(conn.peer, local_ip, self.limits.admin_networks):
                raise _Reply(HTTPStatus.FORBIDDEN, b"forbidden from this address\n")
            if path == "/api/poke" and method == "POST":
                self.media.on_poke()
                raise _Reply(HTTPStatus.NO_CONTENT, b"")
            if path == "/metrics" and method == "GET" and self.media.metrics is not None:
                await self._metrics(conn)
                return
            raise _Reply(HTTPStatus.NOT_FOUND, b"not found\n")
        if method not in ("GET", "HEAD"):
            raise _Reply(HTTPStatus.NOT_FOUND, b"not found\n")
        m = _MEDIA_PATH.match(path)
        if m is None:
            raise _Reply(HTTPStatus.NOT_FOUND, b"no such media\n")
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.pool, self.media.lookup, m.group(1))
        await self._send_file(conn, found, body=method == "GET")

    async def _metrics(self, conn: _Conn) -> None:
        assert self.media.metrics is not None
        loop = asyncio.get_running_loop()
        try:
            body = (await loop.run_in_executor(self.pool, self.media.metrics)).encode()
        except Exception:
            # A scrape must never take the media server down with it.
            logger.exception("metrics collection failed")
            raise _Reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"metrics unavailable\n") from None
        await self._send(conn, HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8")

    async def _write(self, conn: _Conn, data: bytes) -> None:
        conn.writer.write(data)
        await asyncio.wait_for(conn.writer.drain(), self.limits.send_timeout_s)

    @staticmethod
    def _head(status: HTTPStatus, headers: dict[str, str]) -> bytes:
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        return ("\r\n".join([*lines, "Connection: close", "", ""])).encode("latin-1")

    async def _send(
        self,
        conn: _Conn,
        status: HTTPStatus,
        body: bytes,
        ctype: str = "text/plain",
        *,
        head_only: bool = False,
    ) -> None:
        head = self._head(status, {"Content-Type": ctype, "Content-Length": str(len(body))})
        await self._write(conn, head if head_only else head + body)

    async def _send_file(self, conn: _Conn, path: Path, *, body: bool) -> None:
        # Open, stat, read and close run in the pool: a slow disk delays this request,
        # never the loop and so never the other boxes.
        loop = asyncio.get_running_loop()
        fh = await loop.run_in_executor(self.pool, path.open, "rb")
        try:
            size = (await loop.run_in_executor(self.pool, os.fstat, fh.fileno())).st_size
            headers = {
                "Content-Type": "audio/mpeg" if path.suffix == ".mp3" else "audio/ogg",
                "Content-Length": str(size),
                "Cache-Control": "public, max-age=31536000, immutable",
            }
            await self._write(conn, self._head(HTTPStatus.OK, headers))
            while body and (chunk := await loop.run_in_executor(self.pool, fh.read, _CHUNK)):
                await self._write(conn, chunk)
        finally:
            fh.close()


class MediaServer:
    """Serves ``GET /media/<sha256>[.ext]``, ``GET /healthz``, ``GET /metrics``, ``POST /api/poke``.

    ``referenced``: answers whether a stored file may be served now (the controller's:
    only what a current delivery or schedule uses, loudspeaker/media_refs.py); None serves
    every file in the store (the conformance kit, the CLI's direct emergency send).
    """

    def __init__(
        self,
        store: MediaStore,
        host: str,
        port: int,
        on_poke: Callable[[], None],
        metrics: Callable[[], str] | None = None,
        *,
        limits: MediaLimits | None = None,
        referenced: Callable[[str], bool] | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.host = host
        self.port = port
        self.on_poke = on_poke
        self.limits = limits or MediaLimits()
        self.referenced = referenced
        self._http: _Http | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def lookup(self, sha256: str) -> Path:
        """The file to serve for ``sha256`` (raises ``_Reply`` 404/503; runs off the loop)."""
        path = self.store.path_for(sha256)
        if path is None:
            raise _Reply(HTTPStatus.NOT_FOUND, b"no such media\n")
        if self.referenced is not None:
            try:
                allowed = self.referenced(sha256)
            except Exception:
                logger.exception("cannot check whether media %s is in use", sha256[:12])
                # Retryable: the box tries again, and a database hiccup loses no broadcast.
                raise _Reply(HTTPStatus.SERVICE_UNAVAILABLE, b"try again\n") from None
            if not allowed:
                raise _Reply(HTTPStatus.NOT_FOUND, b"no such media\n")
        return path

    @property
    def connections(self) -> int:
        """Connections held right now."""
        return len(self._http.slots) if self._http is not None else 0

    def start(self) -> None:
        """Bind and serve in a background thread."""
        loop = asyncio.new_event_loop()
        http = _Http(self)
        thread = threading.Thread(target=loop.run_forever, name="media-http", daemon=True)
        thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(
                http.start(self.host, self.port), loop
            ).result(timeout=30)
        except (OSError, concurrent.futures.TimeoutError) as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            raise LoudspeakerError(
                f"cannot serve media on {self.host}:{self.port}: {exc} "
                "(another controller running? choose --http-port)"
            ) from None
        self._loop, self._http, self._thread = loop, http, thread

    def stop(self) -> None:
        """Stop serving and close every connection."""
        loop, http, thread = self._loop, self._http, self._thread
        if loop is None or http is None or thread is None:
            return
        self._loop = self._http = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(http.stop(), loop).result(timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("media server did not stop cleanly")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        # The requests are over, so no read is queued: the pool's threads end now.
        http.pool.shutdown(wait=True, cancel_futures=True)
        if not thread.is_alive():
            loop.close()
