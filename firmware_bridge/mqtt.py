"""MQTT plumbing shared by the controller, the agent and the fleet simulator.

paho's client is not fully thread safe, so every client belongs to exactly one
:class:`MqttLoop` thread: it connects, reads, writes, pings and reconnects there, and the
rest of the program hands work over with :meth:`MqttLink.publish`, which only enqueues.
One loop can drive many links (the simulator runs hundreds of clusters on one thread).
Reconnection uses :class:`~firmware_bridge.backoff.Backoff`, the project's one policy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_bridge.backoff import Backoff, Retrier
from firmware_bridge.exceptions import BrokerError

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
PublishDone = Callable[[bool, str], None]


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the broker is and how to log in."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerEndpoint:
        """Parse ``mqtt://[user:pass@]host[:port]`` (``mqtts://`` for TLS)."""
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise BrokerError(
                f"broker URL {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        default_port = 8883 if parsed.scheme == "mqtts" else 1883
        return cls(
            host=parsed.hostname,
            port=parsed.port or default_port,
            username=parsed.username,
            password=parsed.password,
            tls_ca="system" if parsed.scheme == "mqtts" else None,
        )

    @property
    def url(self) -> str:
        """The endpoint as a URL, without the password."""
        scheme = "mqtts" if self.tls_ca else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Will:
    """A retained last-will message."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    """One MQTT v5 session with a fixed client id, driven by an :class:`MqttLoop`.

    Subscriptions are renewed and ``on_connected`` runs on every (re)connect, because a
    broker that lost our session has forgotten them.
    """

    def __init__(
        self,
        client_id: str,
        endpoint: BrokerEndpoint,
        *,
        on_message: MessageHandler,
        subscriptions: tuple[str, ...] = (),
        will: Will | None = None,
        on_connected: Callable[[MqttLink], None] | None = None,
        on_disconnected: Callable[[MqttLink, str], None] | None = None,
        keepalive: int = 15,
        session_expiry_s: int = 24 * 3600,
        max_inflight: int = 1000,
    ) -> None:
        self.client_id = client_id
        self.endpoint = endpoint
        self.subscriptions = subscriptions
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self._on_disconnected_cb = on_disconnected
        self._will = will
        self._keepalive = keepalive
        self._session_expiry_s = session_expiry_s
        self._max_inflight = max_inflight
        self._loop: MqttLoop | None = None
        self._client: paho.Client | None = None
        self._pending: dict[int, PublishDone] = {}
        self._subscribe_mid: int | None = None
        self._early: list[tuple[str, bytes, int, bool, PublishDone | None]] = []
        self._early_lock = threading.Lock()
        self._backoff = Retrier(Backoff(initial=0.2, cap=10.0, jitter=0.2))
        self._next_attempt = 0.0
        self._closing = False
        self._connect_called = False
        self.connected = threading.Event()
        self.reconnects = 0
        self.last_error = ""

    # -- called from any thread -------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: PublishDone | None = None,
    ) -> None:
        """Hand a message to the loop thread; ``on_done(ok, reason)`` runs on PUBACK.

        Before the link is added to a loop the message waits and goes out once it is (an
        agent's workers may report before its new link is adopted, e.g. after a reboot).
        """
        with self._early_lock:
            if self._loop is None:
                self._early.append((topic, payload, qos, retain, on_done))
                return
            loop = self._loop
        loop.call(lambda: self._publish_now(topic, payload, qos, retain, on_done))

    def drop(self) -> None:
        """Cut the connection without a DISCONNECT, as a lost 4G link does.

        The broker then publishes our last will; the link reconnects with its backoff.
        For the simulator and tests.
        """
        if self._loop is None:
            raise BrokerError(f"{self.client_id}: drop before the link was started")

        def _do() -> None:
            sock = self._client.socket() if self._client is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        self._loop.call(_do)

    # -- loop thread only ---------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
        )
        if self.endpoint.username:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls_ca:
            ca = None if self.endpoint.tls_ca == "system" else self.endpoint.tls_ca
            client.tls_set(ca_certs=ca)
        if self._will is not None:
            client.will_set(
                self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain
            )
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)  # unlimited: QoS 1 messages wait out an outage
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
        props.SessionExpiryInterval = self._session_expiry_s
        return props

    def _try_connect(self, now: float) -> None:
        assert self._loop is not None
        if self._client is None:
            self._client = self._make_client()
            self._loop.attach(self, self._client)
        try:
            if not self._connect_called:
                # connect() records host, keepalive and properties; later attempts reuse them.
                self._connect_called = True
                self._client.connect(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=self._keepalive,
                    # No session to keep (expiry 0): start clean, so nothing left by an
                    # earlier connection of the same account is resumed either.
                    clean_start=self._session_expiry_s == 0,
                    properties=self._connect_properties(),
                )
            else:
                self._client.reconnect()
        except (OSError, ValueError) as exc:
            self.last_error = str(exc)
            delay = self._backoff.next_delay()
            self._next_attempt = now + delay
            logger.warning(
                "%s: cannot reach broker %s (%s); retrying in %.1f s",
                self.client_id,
                self.endpoint.url,
                exc,
                delay,
            )

    def _publish_now(
        self, topic: str, payload: bytes, qos: int, retain: bool, on_done: PublishDone | None
    ) -> None:
        if self._client is None:
            self._client = self._make_client()
            assert self._loop is not None
            self._loop.attach(self, self._client)
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, RuntimeError) as exc:
            logger.error("%s: publish to %s refused: %s", self.client_id, topic, exc)
            if on_done is not None:
                on_done(False, str(exc))
            return
        if on_done is not None:
            if qos == 0:
                on_done(True, "")
            else:
                self._pending[info.mid] = on_done

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused connection: {reason_code}"
            logger.error("%s: %s", self.client_id, self.last_error)
            return
        self._backoff.reset()
        logger.info(
            "%s: connected to %s (session present: %s)",
            self.client_id,
            self.endpoint.url,
            flags.session_present,
        )
        if self.subscriptions:
            # Ready only once the broker holds the subscriptions (SUBACK, not CONNACK): a
            # command published in between would reach no one, and "online" (published by
            # the on_connected handler) promises that it would.
            _rc, self._subscribe_mid = client.subscribe([(s, 1) for s in self.subscriptions])
            return
        self._ready()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [
            f"{sub} ({rc})"
            for sub, rc in zip(self.subscriptions, reason_codes, strict=False)
            if rc.is_failure
        ]
        if refused:
            self.last_error = f"subscription refused: {', '.join(refused)}"
            logger.error("%s: %s", self.client_id, self.last_error)
        self._ready()

    def _ready(self) -> None:
        self.connected.set()
        if self._on_connected_cb is not None:
            try:
                self._on_connected_cb(self)
            except Exception:
                logger.exception("%s: on_connected handler failed", self.client_id)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._closing:
            return
        self.last_error = f"disconnected: {reason_code}"
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        self.reconnects += 1
        if was:
            logger.warning(
                "%s: lost broker (%s); reconnecting in %.1f s", self.client_id, reason_code, delay
            )
        if self._on_disconnected_cb is not None:
            try:
                self._on_disconnected_cb(self, str(reason_code))
            except Exception:
                logger.exception("%s: on_disconnected handler failed", self.client_id)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        # A handler's bug must never take the loop (and every other link on it) down.
        try:
            self._on_message_cb(msg.topic, bytes(msg.payload))
        except Exception:
            logger.exception(
                "%s: handler failed on %s (%d bytes); message dropped",
                self.client_id,
                msg.topic,
                len(msg.payload),
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        done = self._pending.pop(mid, None)
        if done is None:
            return
        ok = not reason_code.is_failure
        try:
            done(ok, "" if ok else str(reason_code))
        except Exception:
            logger.exception("%s: publish callback failed", self.client_id)

    def _close_now(self, final: tuple[str, bytes] | None) -> None:
        self._closing = True
        client = self._client
        if client is None:
            return
        if final is not None and self.connected.is_set():
            client.publish(final[0], final[1], qos=1, retain=True)
        try:
            client.disconnect()
            # Flush the DISCONNECT (and the final message) before the socket goes.
            for _ in range(20):
                if not client.want_write():
                    break
                client.loop_write()
        except (OSError, ValueError):
            pass
        assert self._loop is not None
        self._loop.detach(self)


class MqttLoop:
    """A thread that owns and drives a set of :class:`MqttLink` (paho external loop)."""

    def __init__(self, name: str = "mqtt-loop") -> None:
        self.name = name
        self._links: list[MqttLink] = []
        self._by_fd: dict[int, MqttLink] = {}
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._write_wanted: set[MqttLink] = set()

    def start(self) -> None:
        """Start the loop thread."""
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (links should be closed first)."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._selector is not None:
            self._selector.close()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def add(self, link: MqttLink) -> None:
        """Adopt a link and start connecting it (with what was published before)."""
        with link._early_lock:
            link._loop = self
            early, link._early = link._early, []
            self.call(lambda: self._adopt(link))
            for args in early:
                self.call(functools.partial(link._publish_now, *args))

    def close_link(self, link: MqttLink, final: tuple[str, bytes] | None = None) -> None:
        """Disconnect a link cleanly, publishing ``final`` (retained) first, and wait."""
        done = threading.Event()

        def _do() -> None:
            try:
                link._close_now(final)
            finally:
                done.set()

        self.call(_do)
        done.wait(5.0)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread."""
        self._calls.put(fn)
        self._wake()

    # -- loop thread ----------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"x")

    def _adopt(self, link: MqttLink) -> None:
        self._links.append(link)
        link._try_connect(time.monotonic())

    def attach(self, link: MqttLink, client: paho.Client) -> None:
        """Register paho's socket callbacks for ``client`` (loop thread only)."""
        client.on_socket_open = lambda c, u, sock: self._sock_open(link, sock)
        client.on_socket_close = lambda c, u, sock: self._sock_close(link, sock)
        client.on_socket_register_write = lambda c, u, sock: self._write_wanted.add(link)
        client.on_socket_unregister_write = lambda c, u, sock: self._write_wanted.discard(link)

    def detach(self, link: MqttLink) -> None:
        """Forget ``link`` (loop thread only)."""
        if link._client is not None:
            sock = link._client.socket()
            if sock is not None:
                self._sock_close(link, sock)
                with contextlib.suppress(OSError):
                    sock.close()
        self._write_wanted.discard(link)
        if link in self._links:
            self._links.remove(link)

    def _sock_open(self, link: MqttLink, sock: object) -> None:
        assert self._selector is not None
        fd = sock.fileno()  # type: ignore[attr-defined]
        try:
            self._selector.register(fd, selectors.EVENT_READ, link)
        except KeyError:
            self._selector.modify(fd, selectors.EVENT_READ, link)
        self._by_fd[fd] = link

    def _sock_close(self, link: MqttLink, sock: object) -> None:
        assert self._selector is not None
        try:
            fd = sock.fileno()  # type: ignore[attr-defined]
        except OSError:
            fd = -1
        for known_fd, owner in list(self._by_fd.items()):
            if owner is link and (fd in (-1, known_fd)):
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(known_fd)
                del self._by_fd[known_fd]
        self._write_wanted.discard(link)

    def _run(self) -> None:
        assert self._selector is not None
        last_misc = 0.0
        while not self._stop.is_set():
            self._run_calls()
            now = time.monotonic()
            for link in list(self._links):
                if link._closing:
                    continue
                client = link._client
                idle = client is None or client.socket() is None
                if idle and now >= link._next_attempt:
                    link._try_connect(now)
            for link in list(self._write_wanted):
                if link._client is not None and link._client.socket() is not None:
                    self._step(link, "write")
            try:
                events = self._selector.select(timeout=0.1)
            except (OSError, ValueError):
                logger.exception("%s: select failed", self.name)
                time.sleep(0.05)
                continue
            for key, _mask in events:
                link = key.data
                if link is None:
                    self._drain_wake()
                    continue
                self._step(link, "read")
            now = time.monotonic()
            if now - last_misc >= 0.5:
                last_misc = now
                for link in list(self._links):
                    if link._client is not None and link._client.socket() is not None:
                        self._step(link, "misc")

    def _step(self, link: MqttLink, what: str) -> None:
        client = link._client
        assert client is not None
        try:
            if what == "read":
                client.loop_read()
            elif what == "write":
                client.loop_write()
            else:
                client.loop_misc()
        except Exception:
            # Never let one client's failure stop the loop that drives the others.
            logger.exception("%s: %s on %s failed", self.name, what, link.client_id)

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                logger.exception("%s: queued call failed", self.name)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
