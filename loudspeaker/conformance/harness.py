"""The kit's side of the wire: an MQTT session as the controller, a media server, commands.

Everything the box sends is kept in arrival order (with a sequence number), so a check can
ask "did X come before Y" and wait, bounded, for a message it expects. Nothing here judges
the box; :mod:`loudspeaker.conformance.checks` does.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from audio.ffmpeg import run_ffmpeg
from firmware_bridge.exceptions import ProtocolError
from firmware_bridge.keys import KeyEntry
from firmware_bridge.mqtt import BrokerEndpoint, MqttLink, MqttLoop
from firmware_bridge.protocol import (
    Ack,
    AnyCommand,
    ControlResult,
    Heartbeat,
    Kind,
    MediaRef,
    PlayCommand,
    Priority,
    Signature,
    Status,
    Topic,
    body_signing_input,
    decode_ack,
    decode_heartbeat,
    decode_result,
    decode_status,
    encode,
    mac_of,
    new_id,
    sign_command,
    topic,
    utcnow,
)
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.media import MediaServer, MediaStore

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ConformanceError(LoudspeakerError):
    """The kit cannot run (broker unreachable, media server cannot bind, ...)."""


@dataclass(frozen=True)
class Received:
    """One message from the box, parsed, with its arrival order and time."""

    seq: int
    kind: Kind
    message: Ack | Status | Heartbeat | ControlResult
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class Malformed:
    """A message from the box that does not parse: a protocol violation by itself."""

    topic: str
    error: str
    payload: bytes


@dataclass
class Inbox:
    """Every message from one box, in arrival order; waits are bounded."""

    cluster: str
    items: list[Received] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, topic_name: str, payload: bytes) -> None:
        """Parse and keep one message (MQTT loop thread)."""
        try:
            kind = Topic.parse(topic_name).kind
            message: Ack | Status | Heartbeat | ControlResult
            if kind is Kind.ACK:
                message = decode_ack(payload)
            elif kind is Kind.STATUS:
                message = decode_status(payload)
            elif kind is Kind.HEALTH:
                message = decode_heartbeat(payload)
            elif kind is Kind.RESULT:
                message = decode_result(payload)
            else:
                return
            if message.cluster != self.cluster:
                raise ProtocolError(f"names cluster {message.cluster!r} on {topic_name}")
        except ProtocolError as exc:
            logger.warning(
                "malformed message on %s: %s; payload %r", topic_name, exc, payload[:200]
            )
            with self._cond:
                self.malformed.append(Malformed(topic_name, str(exc), payload[:500]))
                self._cond.notify_all()
            return
        with self._cond:
            self.items.append(Received(len(self.items), kind, message, time.monotonic()))
            self._cond.notify_all()

    def snapshot(self) -> list[Received]:
        """The messages so far."""
        with self._cond:
            return list(self.items)

    def wait(self, find: Callable[[list[Received]], T | None], timeout: float) -> T | None:
        """Call ``find`` on the messages until it returns something, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = find(self.items)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def acks(self, command_id: str, after: int = -1) -> list[Received]:
        """Acks reporting on ``command_id`` that arrived after sequence number ``after``."""
        with self._cond:
            return [
                r
                for r in self.items
                if r.seq > after and isinstance(r.message, Ack) and r.message.command == command_id
            ]

    def last_seq(self) -> int:
        """The sequence number of the newest message (-1 before the first)."""
        with self._cond:
            return len(self.items) - 1


def route_address(host: str, port: int) -> str:
    """The local address this machine uses to reach ``host:port`` (no packet is sent)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    except OSError as exc:
        raise ConformanceError(
            f"cannot find the local address that reaches {host}:{port} ({exc}); "
            "give --media-host with an address the box can reach"
        ) from None


@dataclass(frozen=True)
class TestAudio:
    """The two tones the kit serves: a short one and a longer one to interrupt or stop."""

    short: MediaRef
    long: MediaRef


def make_tone(directory: Path, seconds: float, freq: int) -> Path:
    """A mono MP3 sine tone of ``seconds``, made with ffmpeg."""
    out = directory / f"tone-{freq}hz-{int(seconds * 1000)}ms.mp3"
    run_ffmpeg(
        [
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={freq}:duration={seconds}",
            "-ac",
            "1",
            "-ar",
            "22050",
            "-b:a",
            "32k",
            str(out),
        ],
        what="generating the conformance test tone",
        timeout_s=60,
    )
    return out


class MediaHost:
    """The kit's own media server, serving generated tones at ``/media/{sha256}.mp3``."""

    SHORT_S = 1.0
    LONG_S = 2.5

    def __init__(self, host: str, port: int = 0) -> None:
        self.host = host
        self.port = port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: MediaServer | None = None

    def start(self) -> TestAudio:
        """Generate the tones and serve them; raise ``ConformanceError`` if it cannot bind."""
        self._tmp = tempfile.TemporaryDirectory(prefix="loudspeaker-conformance-")
        root = Path(self._tmp.name)
        store = MediaStore(root / "media")
        refs = []
        for seconds, freq in ((self.SHORT_S, 880), (self.LONG_S, 440)):
            sha, size = store.add_file(make_tone(root, seconds, freq), "mp3")
            refs.append((sha, size, seconds))
        self._server = MediaServer(store, self.host, self.port, on_poke=lambda: None)
        try:
            self._server.start()
        except LoudspeakerError as exc:
            raise ConformanceError(f"{exc}; choose --media-host/--media-port") from None
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self._server.port}/media"
        short, long = (
            MediaRef(url=f"{base}/{sha}.mp3", sha256=sha, size=size, duration_s=seconds)
            for sha, size, seconds in refs
        )
        logger.info("serving test audio at %s", base)
        return TestAudio(short=short, long=long)

    def stop(self) -> None:
        """Stop serving and delete the tones."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class Controller:
    """The kit as the box's controller: one MQTT session, signing with the box's key."""

    def __init__(
        self, endpoint: BrokerEndpoint, site: str, cluster: str, key: KeyEntry | None
    ) -> None:
        self.endpoint = endpoint
        self.site = site
        self.cluster = cluster
        self.key = key
        self.inbox = Inbox(cluster)
        self._loop: MqttLoop | None = None
        self._link: MqttLink | None = None

    def start(self, timeout: float) -> None:
        """Connect and subscribe to the box's topics; ``ConformanceError`` if unreachable."""
        self._loop = MqttLoop(name="conformance-mqtt")
        self._loop.start()
        # Status last: its retained message coming back proves the others are in place.
        subs = tuple(topic(self.site, self.cluster, k) for k in (Kind.ACK, Kind.RESULT))
        subs += (topic(self.site, self.cluster, Kind.HEALTH),)
        subs += (topic(self.site, self.cluster, Kind.STATUS),)
        self._link = MqttLink(
            f"conformance-{self.site}-{self.cluster}-{new_id()[:8]}",
            self.endpoint,
            on_message=self.inbox.add,
            subscriptions=subs,
            keepalive=10,
            # Leave no session behind on the broker.
            session_expiry_s=0,
        )
        self._loop.add(self._link)
        if not self._link.connected.wait(timeout):
            why = self._link.last_error or "no answer"
            self.stop()
            raise ConformanceError(
                f"cannot connect to the broker at {self.endpoint.url} within {timeout:.0f} s "
                f"({why}); check --broker and --credentials"
            )

    def stop(self) -> None:
        """Disconnect."""
        if self._loop is not None:
            if self._link is not None:
                self._loop.close_link(self._link)
            self._loop.stop()
        self._loop = None
        self._link = None

    def read_retained(self, kind: Kind, timeout: float) -> bytes | None:
        """What a new subscriber gets on one of the box's topics: the retained message.

        Ends the kit's own connection first: on a locked-down broker the client id is the
        user name, so a second connection with the same account (``_operator``) and ours,
        reconnecting, would keep replacing each other. The only caller, the last-will
        check, runs last and after the box died: nothing more is waited for on it.
        """
        if self._loop is None:
            raise ConformanceError("not connected")
        if self._link is not None:
            self._loop.close_link(self._link)
            self._link = None
        got: list[bytes] = []
        arrived = threading.Event()

        def on_message(_topic: str, payload: bytes) -> None:
            got.append(payload)
            arrived.set()

        reader = MqttLink(
            f"conformance-{self.site}-{self.cluster}-{new_id()[:8]}",
            self.endpoint,
            on_message=on_message,
            subscriptions=(topic(self.site, self.cluster, kind),),
            keepalive=10,
            session_expiry_s=0,
        )
        self._loop.add(reader)
        try:
            arrived.wait(timeout)
        finally:
            self._loop.close_link(reader)
        return got[0] if got else None

    # -- sending ------------------------------------------------------------------------------

    def send(self, payload: bytes, timeout: float) -> None:
        """Publish on the box's ``cmd`` topic and wait for the broker's PUBACK (bounded)."""
        if self._link is None:
            raise ConformanceError("not connected")
        done = threading.Event()
        outcome: list[tuple[bool, str]] = []

        def on_done(ok: bool, reason: str) -> None:
            outcome.append((ok, reason))
            done.set()

        self._link.publish(topic(self.site, self.cluster, Kind.CMD), payload, on_done=on_done)
        if not done.wait(timeout):
            raise ConformanceError(f"the broker did not acknowledge a command in {timeout:.0f} s")
        ok, reason = outcome[0]
        if not ok:
            raise ConformanceError(
                f"the broker refused the command ({reason}): may this account write "
                f"{topic(self.site, self.cluster, Kind.CMD)}?"
            )

    def send_command(self, command: AnyCommand, timeout: float) -> None:
        """Send a command as is (sign it first with :meth:`sign` if it should be signed)."""
        self.send(encode(command), timeout)

    # -- building commands --------------------------------------------------------------------

    def sign(self, command: AnyCommand) -> AnyCommand:
        """``command`` signed with the box's key (unchanged when the kit has no key)."""
        if self.key is None:
            return command
        return sign_command(command, self.key.secret, self.key.kid)

    def forge(self, command: AnyCommand) -> AnyCommand:
        """``command`` with a signature that does not match (one MAC digit changed)."""
        if self.key is None:
            raise ConformanceError("forging needs the box's key id")
        signed = sign_command(command, self.key.secret, self.key.kid)
        assert signed.sig is not None
        mac = signed.sig.mac
        bad = ("0" if mac[0] != "0" else "1") + mac[1:]
        return signed.model_copy(update={"sig": signed.sig.model_copy(update={"mac": bad})})

    def sign_raw(self, body: dict[str, Any]) -> bytes:
        """Sign a hand-built command body (one the protocol models cannot express)."""
        data: dict[str, Any] = {k: v for k, v in body.items() if k != "sig"}
        if self.key is not None:
            mac = mac_of(self.key.secret, body_signing_input(data, self.key.kid))
            data["sig"] = Signature(kid=self.key.kid, mac=mac).model_dump(mode="json")
        else:
            data["sig"] = None
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def play(
        self,
        media: MediaRef,
        *,
        title: str,
        priority: Priority = Priority.NORMAL,
        lifetime: timedelta = timedelta(minutes=10),
        issued_shift: timedelta = timedelta(0),
        start_in: timedelta | None = None,
        volume: int | None = None,
    ) -> PlayCommand:
        """An unsigned play command for this box, issued now (+ ``issued_shift``)."""
        issued = utcnow() + issued_shift
        return PlayCommand(
            id=new_id(),
            cluster=self.cluster,
            broadcast=new_id()[:16],
            issued_at=issued,
            expires_at=issued + lifetime,
            priority=priority,
            title=f"conformance: {title}",
            media=media,
            volume=volume,
            start_at=None if start_in is None else issued + start_in,
        )
