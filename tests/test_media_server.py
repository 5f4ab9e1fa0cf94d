"""The media server under load, in-process: a real server thread on 127.0.0.1:0, real sockets.

No process is started (the server is a thread), so these are fast tests. The chaos tests
with a real ``loudspeaker serve`` and real boxes are tests/chaos/test_chaos_media.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from loudspeaker import fd_budget
from loudspeaker.config import Settings
from loudspeaker.db import init_db, make_engine
from loudspeaker.exceptions import ConfigError
from loudspeaker.media import MediaServer, MediaStore
from loudspeaker.media_policy import (
    MediaLimits,
    is_admin,
    local_host,
    parse_admin_from,
    url_host,
)
from loudspeaker.media_refs import is_referenced
from loudspeaker.media_slots import SlotTable
from loudspeaker.models import (
    Announcement,
    Broadcast,
    Delivery,
    DeliveryState,
    ScheduleRecord,
    now,
)
from tests.helpers import wait_until


@pytest.fixture
def stored(tmp_path: Path) -> tuple[MediaStore, str, bytes]:
    """A store holding one small file; its sha256 and bytes."""
    src = tmp_path / "a.mp3"
    data = b"ID3" + bytes(range(256)) * 600
    src.write_bytes(data)
    store = MediaStore(tmp_path / "media")
    sha, _size = store.add_file(src, "mp3")
    return store, sha, data


@contextlib.contextmanager
def serving(store: MediaStore, **kw: object) -> Iterator[MediaServer]:
    """A started server on a free loopback port, stopped after."""
    server = MediaServer(store, "127.0.0.1", 0, **kw)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(url: str, *, method: str = "GET", source: str | None = None) -> tuple[int, bytes]:
    """Status and body of one request (``source``: bind the client to this address)."""
    if source is not None:
        host, port = url.split("/")[2].split(":")
        path = "/" + url.split("/", 3)[3]
        with socket.create_connection((host, int(port)), 5, (source, 0)) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_slot_table_evicts_the_busiest_sources_oldest_waiting_connection() -> None:
    table: SlotTable[str] = SlotTable(3)
    a1, _ = table.admit("10.0.0.1", "a1")
    b1, _ = table.admit("10.0.0.2", "b1")
    a2, _ = table.admit("10.0.0.1", "a2")
    assert a1 and b1 and a2
    b1.head_done = True
    # Full: the flooding address (two) loses its oldest waiting connection, not the box.
    c1, victim = table.admit("10.0.0.3", "c1")
    assert c1 is not None and victim is a1 and table.evicted == 1
    # The victim's own clean-up releases it again: no double count.
    table.release(a1)
    assert len(table) == 3
    a2.head_done = c1.head_done = True
    # Every slot is serving: the newcomer is refused, nobody is evicted.
    d1, victim = table.admit("10.0.0.4", "d1")
    assert d1 is None and victim is None and table.refused == 1
    table.release(b1)
    d1, victim = table.admit("10.0.0.4", "d1")
    assert d1 is not None and victim is None


def test_serves_referenced_media_only(stored: tuple[MediaStore, str, bytes]) -> None:
    store, sha, data = stored
    allowed: set[str] = set()
    with serving(store, on_poke=lambda: None, referenced=allowed.__contains__) as server:
        url = f"http://127.0.0.1:{server.port}/media/{sha}.mp3"
        assert get(url)[0] == 404
        allowed.add(sha)
        assert get(url) == (200, data)
        assert get(url, method="HEAD") == (200, b"")
        assert get(f"http://127.0.0.1:{server.port}/media/{'0' * 64}.mp3")[0] == 404
        assert get(f"http://127.0.0.1:{server.port}/healthz") == (200, b"ok\n")


def test_a_failing_reference_check_is_retryable(stored: tuple[MediaStore, str, bytes]) -> None:
    store, sha, _ = stored

    def broken(_sha: str) -> bool:
        raise RuntimeError("database is locked")

    with serving(store, on_poke=lambda: None, referenced=broken) as server:
        # 503: the box's fetcher tries again later (firmware_bridge.agent.MediaFetcher).
        assert get(f"http://127.0.0.1:{server.port}/media/{sha}.mp3")[0] == 503


def test_admin_endpoints_answer_loopback_by_default(stored: tuple[MediaStore, str, bytes]) -> None:
    store, _, _ = stored
    pokes: list[int] = []
    with serving(store, on_poke=lambda: pokes.append(1), metrics=lambda: "m 1\n") as server:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/api/poke", method="POST")[0] == 204
        assert get(f"{base}/metrics") == (200, b"m 1\n")
        assert pokes == [1]


def test_admin_endpoints_refuse_other_addresses(stored: tuple[MediaStore, str, bytes]) -> None:
    store, _, _ = stored
    pokes: list[int] = []
    # Only 127.0.0.1 is "admin" here, so 127.0.0.2 stands in for a box on the network.
    limits = MediaLimits(admin_networks=parse_admin_from("127.0.0.1/32"))
    with serving(
        store, on_poke=lambda: pokes.append(1), metrics=lambda: "m 1\n", limits=limits
    ) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/api/poke", method="POST", source="127.0.0.2")[0] == 403
        assert get(f"{base}/metrics", source="127.0.0.2")[0] == 403
        assert pokes == []
        assert get(f"{base}/metrics", source="127.0.0.1") == (200, b"m 1\n")


def test_admin_address_rules() -> None:
    lo = parse_admin_from("loopback")
    assert is_admin("127.0.0.1", "127.0.0.1", lo)
    assert is_admin("::ffff:127.0.0.1", "::ffff:127.0.0.1", lo)
    assert not is_admin("192.168.1.20", "192.168.1.10", lo)
    # The CLI on this host poking the LAN-bound server: its source is the server's address.
    assert is_admin("192.168.1.10", "192.168.1.10", lo)
    assert is_admin("10.1.2.3", "10.0.0.1", parse_admin_from("loopback, 10.1.0.0/16"))
    assert is_admin("2001:db8::1", "::1", parse_admin_from("any"))
    with pytest.raises(ConfigError, match="not an address"):
        parse_admin_from("localhost")
    with pytest.raises(ConfigError, match="not an address"):
        Settings(http_admin_from="everyone")


def _idle(port: int, n: int, opened: list[socket.socket]) -> None:
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), 5)
        s.sendall(b"GET /media/")  # half a request, never finished
        opened.append(s)


def test_idle_connections_beyond_the_cap_cannot_keep_a_box_out(
    stored: tuple[MediaStore, str, bytes],
) -> None:
    store, sha, data = stored
    limits = MediaLimits(max_connections=20, header_timeout_s=60.0)
    opened: list[socket.socket] = []
    with serving(store, on_poke=lambda: None, limits=limits) as server:
        try:
            _idle(server.port, 60, opened)
            assert wait_until(lambda: server.connections == 20, 10)
            # The attacker's own oldest were dropped for its newest; a box still gets in.
            url = f"http://127.0.0.1:{server.port}/media/{sha}.mp3"
            assert get(url) == (200, data)
            assert server.connections <= 20

            # Some of the idle ones were closed by the server (not left to pile up).
            def closed() -> int:
                ready, _, _ = select.select(opened, [], [], 0.2)
                return len(ready)  # an idle socket is readable only at EOF or reset

            assert wait_until(lambda: closed() >= 40, 5)
        finally:
            for s in opened:
                s.close()


def test_a_trickling_request_is_cut_at_the_header_deadline(
    stored: tuple[MediaStore, str, bytes],
) -> None:
    store, _, _ = stored
    limits = MediaLimits(header_timeout_s=0.5)
    with serving(store, on_poke=lambda: None, limits=limits) as server:
        with socket.create_connection(("127.0.0.1", server.port), 5) as s:
            s.settimeout(10)
            closed = threading.Event()

            def trickle() -> None:
                for ch in b"GET /media/abc":
                    try:
                        s.sendall(bytes([ch]))
                    except OSError:
                        break
                    if closed.wait(0.1):
                        break

            t = threading.Thread(target=trickle)
            t.start()
            try:
                assert s.recv(1) == b""  # closed by the server, well before the head ended
            finally:
                closed.set()
                t.join(5)
        assert wait_until(lambda: server.connections == 0, 5)


def test_full_of_busy_requests_refuses_with_503(stored: tuple[MediaStore, str, bytes]) -> None:
    store, _, _ = stored
    release = threading.Event()

    def slow_metrics() -> str:
        release.wait(10)
        return "m 1\n"

    limits = MediaLimits(max_connections=1)
    with serving(store, on_poke=lambda: None, metrics=slow_metrics, limits=limits) as server:
        base = f"http://127.0.0.1:{server.port}"
        result: list[tuple[int, bytes]] = []
        t = threading.Thread(target=lambda: result.append(get(f"{base}/metrics")))
        t.start()
        try:
            assert wait_until(lambda: server.connections == 1, 5)
            with socket.create_connection(("127.0.0.1", server.port), 5) as s:
                s.settimeout(5)
                assert s.recv(64).startswith(b"HTTP/1.1 503")
        finally:
            release.set()
            t.join(10)
        assert result == [(200, b"m 1\n")]


def test_descriptor_budget_raises_the_soft_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"now": (256, 4096)}
    monkeypatch.setattr(fd_budget.resource, "getrlimit", lambda _r: limits["now"])
    monkeypatch.setattr(fd_budget.resource, "setrlimit", lambda _r, v: limits.__setitem__("now", v))
    budget = fd_budget.ensure_descriptors(1024)
    assert limits["now"] == (4096, 4096)
    assert budget.raised and not budget.lowered and budget.max_connections == 1024


def test_descriptor_budget_lowers_the_cap_then_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"now": (1024, 1024)}
    monkeypatch.setattr(fd_budget.resource, "getrlimit", lambda _r: limits["now"])
    budget = fd_budget.ensure_descriptors(1024)
    assert budget.lowered and budget.max_connections == (1024 - fd_budget.BASE_DESCRIPTORS) // 2
    assert "cannot hold 1024 media connections" in caplog.text
    limits["now"] = (140, 140)
    with pytest.raises(ConfigError, match="open-file limit is 140"):
        fd_budget.ensure_descriptors(1024)


def _delivery(b: Broadcast, state: DeliveryState, expires_in: float | None) -> Delivery:
    t = now()
    return Delivery(
        broadcast_id=b.id,
        cluster_id="lb-01",
        command_id=f"c-{b.id}",
        state=state.value,
        queued_at=t,
        updated_at=t,
        expires_at=t + timedelta(seconds=expires_in) if expires_in is not None else None,
    )


def test_referenced_means_a_current_delivery_or_a_live_schedule(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    init_db(engine)
    t = now()
    live, done, sched, paused, unused = (c * 64 for c in "abcde")

    def broadcast(bid: str, sha: str) -> Broadcast:
        return Broadcast(id=bid, title=bid, target="all", media_sha256=sha, created_at=t)

    def ann(aid: str, sha: str) -> Announcement:
        return Announcement(
            id=aid, title=aid, kind="tone", media_sha256=sha, duration_s=1, size=1, created_at=t
        )

    def schedule(aid: str, *, is_paused: bool) -> ScheduleRecord:
        return ScheduleRecord(
            title=aid,
            target="all",
            items=[{"announcement": aid}],
            paused=is_paused,
            created_at=t,
            active_since=t,
            updated_at=t,
        )

    with Session(engine) as s:
        b1, b2 = broadcast("b1", live), broadcast("b2", done)
        s.add_all([b1, b2, ann("a1", sched), ann("a2", paused), ann("a3", unused)])
        s.add(_delivery(b1, DeliveryState.SENT, None))
        s.add(_delivery(b2, DeliveryState.PLAYED, -1.0))
        s.add_all([schedule("a1", is_paused=False), schedule("a2", is_paused=True)])
        s.commit()
        check: Callable[[str], bool] = lambda sha: is_referenced(s, sha)  # noqa: E731
        assert check(live) and check(sched)
        assert not check(done) and not check(paused) and not check(unused)
        # A played command the box may still act on until it expires stays servable.
        b3 = broadcast("b3", unused)
        s.add(b3)
        s.add(_delivery(b3, DeliveryState.PLAYED, 60.0))
        s.commit()
        assert check(unused)
    engine.dispose()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOUDSPEAKER_HTTP_MAX_CONNECTIONS", "200")
    monkeypatch.setenv("LOUDSPEAKER_HTTP_HEADER_TIMEOUT", "3.5")
    monkeypatch.setenv("LOUDSPEAKER_HTTP_ADMIN_FROM", "loopback,10.0.0.5")
    limits = Settings.from_env(tmp_path).media_limits()
    assert limits.max_connections == 200 and limits.header_timeout_s == 3.5
    assert is_admin("10.0.0.5", "10.0.0.1", limits.admin_networks)
    assert not is_admin("10.0.0.6", "10.0.0.1", limits.admin_networks)
    # The budget's lowered cap wins over the configured one.
    assert Settings.from_env(tmp_path).media_limits(100).max_connections == 100
    monkeypatch.setenv("LOUDSPEAKER_HTTP_MAX_CONNECTIONS", "many")
    with pytest.raises(ConfigError, match="LOUDSPEAKER_HTTP_MAX_CONNECTIONS"):
        Settings.from_env(tmp_path)


def test_the_cli_pokes_over_loopback_when_the_server_listens_everywhere() -> None:
    assert local_host("0.0.0.0") == "127.0.0.1"
    assert url_host(local_host("::")) == "[::1]"
    assert local_host("192.168.1.10") == "192.168.1.10"


def _media_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name == "media-http" or t.name.startswith("media-io")
    ]


def _open_paths() -> set[str]:
    fds = Path("/proc/self/fd")
    paths = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            paths.add(os.readlink(fd))
    return paths


def test_stop_mid_send_ends_every_request_and_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A body far larger than the socket buffers: the server is stuck in a write when
    # stop() comes, as it would be with a box on a slow link.
    src = tmp_path / "big.mp3"
    src.write_bytes(b"ID3" + os.urandom(1 << 16) * 256)
    store = MediaStore(tmp_path / "media")
    sha, _ = store.add_file(src, "mp3")
    stored_path = str(store.path_for(sha))
    # A second file whose "in use" check is slow (a busy database): stop() comes while
    # that check runs on the server's I/O pool, and must wait for it.
    (tmp_path / "other.mp3").write_bytes(b"ID3other")
    slow_sha, _ = store.add_file(tmp_path / "other.mp3", "mp3")
    checking = threading.Event()

    def referenced(digest: str) -> bool:
        if digest == slow_sha:
            checking.set()
            threading.Event().wait(0.5)
        return True

    assert not _media_threads()
    server = MediaServer(store, "127.0.0.1", 0, on_poke=lambda: None, referenced=referenced)
    server.start()
    stopped = False
    with (
        socket.create_connection(("127.0.0.1", server.port), 5) as reader,
        socket.create_connection(("127.0.0.1", server.port), 5) as idle,
        socket.create_connection(("127.0.0.1", server.port), 5) as slow,
    ):
        try:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.sendall(f"GET /media/{sha}.mp3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            reader.settimeout(5)
            assert reader.recv(64).startswith(b"HTTP/1.1 200")
            idle.sendall(b"GET /media/")
            slow.sendall(f"GET /media/{slow_sha}.mp3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert wait_until(lambda: server.connections == 3, 5)
            assert checking.wait(5)
            assert stored_path in _open_paths()  # the body is being sent
            assert _media_threads()
            server.stop()
            stopped = True
        finally:
            if not stopped:
                server.stop()
    assert not _media_threads()
    assert stored_path not in _open_paths()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
