"""The cluster agent: what runs on a speaker cluster's receiver box.

It keeps one MQTT session (fixed client id, persistent, retained ``online`` status with a
retained ``offline`` last will), takes commands, fetches and verifies their audio, plays it
through an :class:`~firmware_bridge.abc.AudioSink` and acknowledges every step. Commands
are idempotent by id: a QoS 1 redelivery, even after a restart, is answered with the state
already reached and never played twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from firmware_bridge import __version__
from firmware_bridge.abc import AudioSink, Hardware
from firmware_bridge.backoff import Backoff
from firmware_bridge.exceptions import (
    CommandRefused,
    MediaError,
    MediaUnavailable,
    ProtocolError,
)
from firmware_bridge.hardware import HardwareSink, HostHardware
from firmware_bridge.health import ControlHandler, HeartbeatReporter
from firmware_bridge.keys import AgentKeyring
from firmware_bridge.mqtt import BrokerEndpoint, MqttLink, MqttLoop, Will
from firmware_bridge.player import Outcome, Player
from firmware_bridge.protocol import (
    DUPLICATE_DONE,
    DUPLICATE_IN_PROGRESS,
    REFUSED_PREFIX,
    RESUMED_AFTER_RESTART,
    WITHDRAWN,
    Ack,
    AckState,
    AnyCommand,
    ControlResult,
    DiagnoseCommand,
    Kind,
    MediaRef,
    PlayCommand,
    PowerCommand,
    RebootCommand,
    Status,
    StopCommand,
    VolumeCommand,
    WithdrawCommand,
    check_freshness,
    decode_command,
    encode,
    offline_will,
    sent_string,
    topic,
    utcnow,
    validate_cluster_id,
)

logger = logging.getLogger(__name__)

_FINAL = {AckState.PLAYED, AckState.FAILED}
_FINAL_VALUES = {s.value for s in _FINAL}
_ACK_VALUES = {s.value for s in AckState}
# Journal state of a stop or withdraw that was carried out.
_HANDLED = "handled"
# Download retries while the media server is unreachable, until the command expires.
_FETCH_RETRY = Backoff(initial=0.5, cap=15.0, jitter=0.2)


@dataclass(frozen=True)
class AgentConfig:
    """What one agent needs to know about itself."""

    site: str
    cluster: str
    endpoint: BrokerEndpoint
    state_dir: Path
    keepalive: int = 15
    download_timeout_s: float = 30.0
    remembered_commands: int = 2000
    # Signed commands (docs/security.md): None means <state_dir>/keys.json.
    keys_file: Path | None = None
    max_clock_skew_s: float = 120.0
    key_rotation_window_s: float = 24 * 3600.0
    heartbeat_s: float = 15.0
    # A box without a key file refuses to start (fail closed) unless told explicitly that
    # it is a bench box: then it accepts every command without checking ``sig``.
    insecure_unsigned: bool = False

    def __post_init__(self) -> None:
        validate_cluster_id(self.site)
        validate_cluster_id(self.cluster)
        if not 0 < self.heartbeat_s <= 3600:
            raise ProtocolError(f"heartbeat interval {self.heartbeat_s} s is not in (0, 3600]")

    @property
    def client_id(self) -> str:
        """The MQTT client id: fixed, so the broker keeps our session across reconnects."""
        return f"cluster-{self.site}-{self.cluster}"

    @property
    def key_path(self) -> Path:
        """Where the cluster's command-signing keys are installed."""
        return self.keys_file or self.state_dir / "keys.json"


class CommandJournal:
    """The last states of recent commands, kept on disk so a restart never replays one."""

    def __init__(self, path: Path, limit: int) -> None:
        self._path = path
        self._limit = limit
        self._states: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read the journal; a corrupt file is set aside, not trusted."""
        if not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            self._states = OrderedDict((str(k), str(v)) for k, v in data.items())
        except (OSError, ValueError) as exc:
            bad = self._path.with_suffix(".corrupt")
            logger.error("command journal %s unreadable (%s); moved to %s", self._path, exc, bad)
            os.replace(self._path, bad)

    def get(self, command_id: str) -> str | None:
        """The last recorded state of a command, if any."""
        with self._lock:
            return self._states.get(command_id)

    def set(self, command_id: str, state: str) -> None:
        """Record a state and persist the journal atomically."""
        with self._lock:
            self._states[command_id] = state
            self._states.move_to_end(command_id)
            while len(self._states) > self._limit:
                self._states.popitem(last=False)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._states), encoding="utf-8")
            os.replace(tmp, self._path)


class MediaFetcher:
    """Downloads announcement audio into a content-addressed cache and verifies it."""

    def __init__(self, cache_dir: Path, timeout_s: float) -> None:
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s

    def fetch(self, media: MediaRef) -> Path:
        """Return a local, verified copy of ``media``; raise ``MediaError`` otherwise."""
        target = self.cache_dir / f"{media.sha256}.audio"
        if target.exists() and target.stat().st_size == media.size:
            return target
        tmp = target.with_suffix(f".{threading.get_ident()}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with (
                urllib.request.urlopen(media.url, timeout=self.timeout_s) as resp,
                tmp.open("wb") as out,
            ):
                while chunk := resp.read(64 * 1024):
                    size += len(chunk)
                    if size > media.size:
                        raise MediaError(
                            f"download larger than announced {media.size} bytes; refused"
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except MediaError:
            tmp.unlink(missing_ok=True)
            raise
        except urllib.error.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            err = MediaUnavailable if exc.code >= 500 else MediaError
            raise err(f"download of {media.url} failed: {exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            # Controller restarting, 4G dropping: the file is still there, try again later.
            tmp.unlink(missing_ok=True)
            raise MediaUnavailable(f"download of {media.url} failed: {exc}") from None
        except ValueError as exc:
            tmp.unlink(missing_ok=True)
            raise MediaError(f"download of {media.url} failed: {exc}") from None
        if size != media.size:
            tmp.unlink(missing_ok=True)
            raise MediaError(f"size mismatch: got {size} bytes, expected {media.size}")
        if digest.hexdigest() != media.sha256:
            tmp.unlink(missing_ok=True)
            raise MediaError(f"sha256 mismatch: got {digest.hexdigest()}, expected {media.sha256}")
        os.replace(tmp, target)
        return target


class PendingStore:
    """Accepted commands not yet finished, one JSON file each, so a reboot loses none."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def add(self, command: PlayCommand) -> None:
        """Remember a command (atomically)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / f"{command.id}.tmp"
        tmp.write_bytes(encode(command))
        os.replace(tmp, self._dir / f"{command.id}.json")

    def get(self, command_id: str) -> PlayCommand | None:
        """The stored command, if it is still waiting (None if absent or unreadable)."""
        try:
            command = decode_command((self._dir / f"{command_id}.json").read_bytes())
        except (OSError, ProtocolError):
            return None
        return command if isinstance(command, PlayCommand) else None

    def remove(self, command_id: str) -> bool:
        """Forget a finished command; False if it was not here (finished already)."""
        try:
            (self._dir / f"{command_id}.json").unlink()
        except FileNotFoundError:
            return False
        return True

    def load(self) -> list[PlayCommand]:
        """Commands still to play; unreadable files are set aside, not trusted."""
        out: list[PlayCommand] = []
        if not self._dir.exists():
            return out
        for path in sorted(self._dir.glob("*.json")):
            try:
                command = decode_command(path.read_bytes())
            except (OSError, ProtocolError) as exc:
                logger.error("pending item %s unreadable (%s); set aside", path, exc)
                os.replace(path, path.with_suffix(".corrupt"))
                continue
            if isinstance(command, PlayCommand):
                out.append(command)
        return out


class ClusterAgent:
    """One cluster's agent. ``start()`` connects; ``stop()`` says offline and disconnects."""

    def __init__(
        self,
        config: AgentConfig,
        sink: AudioSink,
        *,
        loop: MqttLoop | None = None,
        hardware: Hardware | None = None,
        auto_power: bool = True,
    ) -> None:
        self.config = config
        self.sink = sink
        self.hardware = hardware if hardware is not None else HostHardware()
        # Everything plays through this: the hardware learns when audio flows. A sink that
        # switches the amplifier itself (the serial gateway's) turns ``auto_power`` off.
        self.output = HardwareSink(sink, self.hardware, auto_power=auto_power)
        self.reporter: HeartbeatReporter | None = None
        self.control: ControlHandler | None = None
        self._shared_loop = loop
        self._loop: MqttLoop | None = None
        self._link: MqttLink | None = None
        self._queue: queue.Queue[PlayCommand | None] = queue.Queue()
        self._journal = CommandJournal(
            config.state_dir / "commands.json", config.remembered_commands
        )
        self._fetcher = MediaFetcher(config.state_dir / "media", config.download_timeout_s)
        self._pending = PendingStore(config.state_dir / "pending")
        self.player = Player(
            self.output, self._on_outcome, prepare=self._prepare, after=self._after_item
        )
        self._keys = AgentKeyring(
            config.key_path,
            config.state_dir / "key-rotation.json",
            site=config.site,
            cluster=config.cluster,
            rotation_window=timedelta(seconds=config.key_rotation_window_s),
        )
        self._worker: threading.Thread | None = None
        self._stopped_broadcasts: set[str] = set()
        # Withdrawn play commands; the lock orders a withdraw against handing to the player.
        self._withdrawn: set[str] = set()
        self._withdraw_lock = threading.Lock()
        self._finish_lock = threading.Lock()
        self._fetch_attempts: dict[str, int] = {}
        self._stopping = threading.Event()
        # Items taken back from the persistent store at this boot, not yet reported again.
        self._resumed: set[str] = set()
        # Counts boots (a process start or an in-place reboot): a fetch or retry timer of an
        # earlier boot finds it changed and drops its item, which the store has resumed.
        self._generation = 0
        # Orders taking a new command (store, then queue) against a boot reading the store
        # and replacing the queue: every accepted item is queued exactly once per boot.
        self._intake_lock = threading.Lock()

    @property
    def link(self) -> MqttLink:
        """The MQTT link (after ``start()``)."""
        if self._link is None:
            raise RuntimeError("agent not started")
        return self._link

    def start(self) -> None:
        """Open the state directory, start the sink, connect, and start working."""
        cfg = self.config
        (cfg.state_dir / "media").mkdir(parents=True, exist_ok=True)
        self._keys.load(required=not cfg.insecure_unsigned)
        self._journal.load()
        self.sink.start()
        self.hardware.start()
        if self._shared_loop is None:
            self._loop = MqttLoop(name=f"mqtt-{cfg.cluster}")
            self._loop.start()
        else:
            self._loop = self._shared_loop
        self._link = self._new_link()
        self._start_health()
        self._boot()
        self._loop.add(self._link)

    def stop(self) -> None:
        """Publish a retained ``offline``, disconnect, and stop working."""
        cfg = self.config
        self._halt()
        if self._loop is not None and self._link is not None:
            final = encode(
                Status(
                    cluster=cfg.cluster,
                    state="offline",
                    ts=utcnow(),
                    agent=__version__,
                    reason="agent stopped",
                )
            )
            self._loop.close_link(self._link, (topic(cfg.site, cfg.cluster, Kind.STATUS), final))
        self._stop_health()
        if self._shared_loop is None and self._loop is not None:
            self._loop.stop()
        self.sink.close()
        self.hardware.close()

    def _boot(self) -> None:
        """Start a boot's work: the playout, the fetch worker, and the resumed items.

        The one path by which work starts, for a process start and an in-place reboot
        alike. Every item accepted before and not finished (waiting, or cut off while
        playing) comes back from the persistent store: fetched again if needed (usually
        cached) and played from the start at its time. `received` is not sent again; a
        `staged` "resumed after restart" says where it stands (docs/protocol.md §4).
        """
        cfg = self.config
        with self._intake_lock:
            self._generation += 1
            self._stopping.clear()
            self._fetch_attempts.clear()
            self._queue = queue.Queue()
            self.player.start()
            resumed = self._pending.load()
            self._resumed = {command.id for command in resumed}
            for command in resumed:
                self._queue.put(command)
            self._worker = threading.Thread(
                target=self._fetch_loop,
                args=(self._queue, self._generation),
                name=f"fetch-{cfg.cluster}",
                daemon=True,
            )
            self._worker.start()
        if resumed:
            logger.info("%s: resuming %d accepted item(s)", cfg.cluster, len(resumed))

    def _halt(self) -> None:
        """End a boot's work as a shutdown does: nothing more is fetched or played.

        The item playing is cut off and not reported; it and every waiting item stay in the
        persistent store for the next ``_boot`` (a graceful stop counts as a restart).
        """
        self._stopping.set()
        self._queue.put(None)
        self.player.stop()
        if self._worker is not None:
            self._worker.join(5)

    # -- MQTT side (loop thread: never block here) ---------------------------------------

    def _on_connected(self, link: MqttLink) -> None:
        cfg = self.config
        status = Status(cluster=cfg.cluster, state="online", ts=utcnow(), agent=__version__)
        link.publish(topic(cfg.site, cfg.cluster, Kind.STATUS), encode(status), retain=True)
        if self.reporter is not None:
            self.reporter.request()

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        try:
            command = decode_command(payload)
        except ProtocolError as exc:
            logger.warning(
                "%s: refused command on %s: %s; payload %r",
                self.config.cluster,
                topic_name,
                exc,
                payload[:200],
            )
            self._refuse_raw(payload, str(exc))
            return
        if command.cluster != self.config.cluster:
            logger.warning(
                "%s: command %s is addressed to %s; ignored",
                self.config.cluster,
                command.id,
                command.cluster,
            )
            return
        if not self._admit(command, payload):
            return
        if isinstance(command, StopCommand):
            self._handle_stop(command)
        elif isinstance(command, WithdrawCommand):
            self._handle_withdraw(command)
        elif isinstance(command, PlayCommand):
            self._journal.set(command.id, AckState.RECEIVED.value)
            with self._intake_lock:
                self._pending.add(command)
                self._queue.put(command)
            self._ack(command, AckState.RECEIVED)
        elif self.control is not None:
            self.control.submit(command)

    def _admit(self, command: AnyCommand, payload: bytes) -> bool:
        """The one check every command type passes before the box acts on it.

        In this order (docs/protocol.md §10): signature (unless the box has no keys; not
        journaled, so an unauthenticated sender cannot burn an id), then the id against
        the journal (a duplicate is answered, never acted on twice), then freshness (the
        same issued/expiry/lifetime rules for play, stop, withdraw and every control
        command; a stale command is journaled as failed). False: refused or answered.
        """
        if self._keys.configured:
            try:
                self._keys.verify(command, utcnow())
            except CommandRefused as exc:
                self._refuse(command, str(exc))
                return False
        seen = self._journal.get(command.id)
        if seen is not None:
            self._answer_duplicate(command, seen)
            return False
        try:
            check_freshness(
                command,
                utcnow(),
                max_skew=timedelta(seconds=self.config.max_clock_skew_s),
                expires_as_sent=sent_string(payload, "expires_at"),
            )
        except CommandRefused as exc:
            # Journaled failed: never acted on later; its replays (and QoS 1 redeliveries)
            # are answered as duplicates (docs/protocol.md §5 and the checks before acting).
            self._journal.set(command.id, AckState.FAILED.value)
            self._refuse(command, str(exc))
            return False
        if isinstance(command, StopCommand | WithdrawCommand):
            # Journaled too, so a replayed stop cannot cut off a later broadcast.
            self._journal.set(command.id, _HANDLED)
        return True

    def _answer_duplicate(self, command: AnyCommand, seen: str) -> None:
        # QoS 1 redelivery or a controller retry: report where we are, act on nothing.
        # Answering unfinished ones too lets a controller that restarted, or lost acks
        # with a crashed broker, learn where we stand.
        logger.info("%s: duplicate command %s (%s)", self.config.cluster, command.id, seen)
        if isinstance(command, PlayCommand):
            if seen not in _ACK_VALUES:
                # The id was used by another command type (a sender's bug): done, not replayed.
                seen = AckState.FAILED.value
            reason = DUPLICATE_DONE if seen in _FINAL_VALUES else DUPLICATE_IN_PROGRESS
            self._ack(command, AckState(seen), reason=reason)
        elif not isinstance(command, StopCommand | WithdrawCommand) and self.control is not None:
            self.control.answer_duplicate(command, seen)
        # A stop or withdraw has no state of its own to repeat: done once, nothing more.

    def _refuse(self, command: AnyCommand, reason: str) -> None:
        cfg = self.config
        logger.warning(
            "%s: refused command %s (%s): %s", cfg.cluster, command.id, command.type, reason
        )
        why = f"{REFUSED_PREFIX}{reason}"[:500]
        if isinstance(command, VolumeCommand | PowerCommand | RebootCommand | DiagnoseCommand):
            result = ControlResult(
                cluster=cfg.cluster,
                command=command.id,
                type=command.type,
                ok=False,
                ts=utcnow(),
                reason=why,
            )
            self._publish_result(result, None)
            return
        ack = Ack(
            cluster=cfg.cluster,
            command=command.id,
            broadcast=command.broadcast,
            state=AckState.FAILED,
            ts=utcnow(),
            reason=why,
        )
        self.link.publish(topic(cfg.site, cfg.cluster, Kind.ACK), encode(ack))

    def _refuse_raw(self, payload: bytes, reason: str) -> None:
        # Answer a malformed command if it carries a usable id, so the sender learns why.
        try:
            data = json.loads(payload)
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                return
            cmd_id = data["id"]
            broadcast = data.get("broadcast")
            ack = Ack(
                cluster=self.config.cluster,
                command=cmd_id,
                broadcast=broadcast if isinstance(broadcast, str) else None,
                state=AckState.FAILED,
                ts=utcnow(),
                reason=f"{REFUSED_PREFIX}{reason}"[:500],
            )
        except (ValueError, TypeError, AttributeError):
            return
        cfg = self.config
        self.link.publish(topic(cfg.site, cfg.cluster, Kind.ACK), encode(ack))

    def _handle_stop(self, command: StopCommand) -> None:
        if command.broadcast is not None:
            self._stopped_broadcasts.add(command.broadcast)
        self.player.stop_broadcast(command.broadcast)
        if command.broadcast is not None:
            self._finish_unheld(command.broadcast)
        logger.info("%s: stop %s", self.config.cluster, command.broadcast or "everything")

    def _finish_unheld(self, broadcast: str) -> None:
        """End the items of a stopped ``broadcast`` that the player does not hold yet.

        Those still downloading, or waiting to retry a download, are on the persistent
        store only: left there, a restart would resume and play a stopped broadcast.
        """
        playing = self.player.current
        with self._withdraw_lock:
            for item in self._pending.load():
                if item.broadcast == broadcast and (playing is None or item.id != playing.id):
                    self._finish(item, AckState.FAILED, "stopped by operator before playback")

    def _ack(self, command: PlayCommand, state: AckState, reason: str | None = None) -> None:
        cfg = self.config
        ack = Ack(
            cluster=cfg.cluster,
            command=command.id,
            broadcast=command.broadcast,
            state=state,
            ts=utcnow(),
            reason=reason,
        )
        self.link.publish(topic(cfg.site, cfg.cluster, Kind.ACK), encode(ack))

    # -- fetch thread and player callbacks ---------------------------------------------------

    def _fetch_loop(self, items: queue.Queue[PlayCommand | None], generation: int) -> None:
        while True:
            command = items.get()
            if command is None or not self._current_boot(generation):
                return
            try:
                self._stage(command, generation)
            except Exception as exc:
                # The box keeps serving: a bug on one item must not silence the cluster.
                logger.exception("%s: command %s crashed", self.config.cluster, command.id)
                if self._current_boot(generation):
                    try:
                        self._finish(command, AckState.FAILED, f"agent error: {exc}")
                    except Exception:
                        # Nor may the report of it end this worker: later items still play.
                        logger.exception("%s: could not report %s", self.config.cluster, command.id)

    def _current_boot(self, generation: int) -> bool:
        """Whether work of boot ``generation`` may still act (no halt or reboot since)."""
        return generation == self._generation and not self._stopping.is_set()

    def _stage(self, command: PlayCommand, generation: int) -> None:
        if command.broadcast in self._stopped_broadcasts:
            self._finish(command, AckState.FAILED, "stopped by operator before playback")
            return
        try:
            path = self._fetcher.fetch(command.media)
        except MediaUnavailable as exc:
            if self._current_boot(generation) and not self._retry_later(
                command, str(exc), generation
            ):
                self._finish(command, AckState.FAILED, str(exc))
            return
        except MediaError as exc:
            if self._current_boot(generation):
                self._finish(command, AckState.FAILED, str(exc))
            return
        self._fetch_attempts.pop(command.id, None)
        with self._withdraw_lock:
            if not self._current_boot(generation):
                return  # a reboot came during the download: the next boot resumes it
            if command.id in self._withdrawn:
                return  # already acknowledged as withdrawn
            if command.broadcast in self._stopped_broadcasts:
                return  # stopped during the download: already acknowledged as failed
            if command.id in self._resumed:
                self._resumed.discard(command.id)
                self._journal.set(command.id, AckState.STAGED.value)
                self._ack(command, AckState.STAGED, RESUMED_AFTER_RESTART)
            elif self._journal.get(command.id) != AckState.STAGED.value:
                self._journal.set(command.id, AckState.STAGED.value)
                self._ack(command, AckState.STAGED)
            self.player.submit(command, path)

    def _prepare(self, command: PlayCommand) -> None:
        """Just before an item starts: its volume (the site's emergency volume, for one)."""
        if command.volume is not None:
            self.output.set_item_volume(command.volume)

    def _after_item(self, command: PlayCommand) -> None:
        """After an item, however it ended: back to the box's own volume.

        So the bulletin an emergency interrupted, and everything after, play at the volume
        the box had before the emergency, not at the emergency's.
        """
        self.output.restore_volume()

    def _retry_later(self, command: PlayCommand, why: str, generation: int) -> bool:
        """Queue ``command`` again after a backoff delay; False if it would expire first."""
        attempt = self._fetch_attempts.get(command.id, 0)
        delay = _FETCH_RETRY.delay(attempt)
        if utcnow().timestamp() + delay >= command.expires_at.timestamp():
            self._fetch_attempts.pop(command.id, None)
            return False
        self._fetch_attempts[command.id] = attempt + 1
        logger.warning("%s: %s; retrying in %.1f s", self.config.cluster, why, delay)
        timer = threading.Timer(delay, self._requeue, (command, generation))
        timer.daemon = True
        timer.start()
        return True

    def _requeue(self, command: PlayCommand, generation: int) -> None:
        # A timer of an earlier boot does nothing: that boot's successor resumed the item.
        with self._intake_lock:
            if self._current_boot(generation):
                self._queue.put(command)

    def _on_outcome(self, command: PlayCommand, outcome: Outcome, reason: str | None) -> None:
        state = AckState(outcome.value)
        if state in _FINAL:
            self._finish(command, state, reason)
            return
        self._journal.set(command.id, state.value)
        self._ack(command, state, reason)

    def _finish(self, command: PlayCommand, state: AckState, reason: str | None = None) -> None:
        """Report ``command``'s final state, once.

        A stop or withdraw ends an item at once, while a download retry or its timer may
        still hold it; whichever comes later finds it gone from the store and says nothing.
        """
        with self._finish_lock:
            if not self._pending.remove(command.id):
                logger.debug("%s: %s already finished", self.config.cluster, command.id)
                return
            self._journal.set(command.id, state.value)
        if self.reporter is not None:
            if state is AckState.PLAYED:
                self.reporter.note_playback(True)
            elif reason and reason.startswith(("playback failed", "agent error")):
                self.reporter.note_playback(False, reason)
        self._ack(command, state, reason)

    # -- health and remote control (docs/health.md) ------------------------------------------

    def _new_link(self) -> MqttLink:
        cfg = self.config
        return MqttLink(
            cfg.client_id,
            cfg.endpoint,
            on_message=self._on_message,
            subscriptions=(topic(cfg.site, cfg.cluster, Kind.CMD),),
            will=Will(
                topic(cfg.site, cfg.cluster, Kind.STATUS), offline_will(cfg.cluster, __version__)
            ),
            on_connected=self._on_connected,
            keepalive=cfg.keepalive,
        )

    def _start_health(self) -> None:
        cfg = self.config
        self.reporter = HeartbeatReporter(
            cluster=cfg.cluster,
            hardware=self.hardware,
            publish=self._publish_heartbeat,
            interval_s=cfg.heartbeat_s,
            storage_path=cfg.state_dir,
            agent_version=__version__,
            playing=self._playing_now,
        )
        self.control = ControlHandler(
            cluster=cfg.cluster,
            hardware=self.hardware,
            output=self.output,
            journal=self._journal,
            publish=self._publish_result,
            reporter=self.reporter,
            busy=self._playing_now,
            mqtt_reconnects=lambda: self.link.reconnects,
            restart=self.restart_in_place,
            work_dir=cfg.state_dir / "diag",
        )
        self.reporter.start()
        self.control.start()

    def _stop_health(self) -> None:
        if self.reporter is not None:
            self.reporter.stop()
        if self.control is not None:
            self.control.stop()

    def _playing_now(self) -> str | None:
        current = self.player.current
        if current is not None:
            return current.broadcast
        return "queued" if not self._queue.empty() or self.player.pending() else None

    def _publish_heartbeat(self, data: bytes) -> None:
        cfg = self.config
        link = self._link
        if link is not None and link.connected.is_set():
            link.publish(topic(cfg.site, cfg.cluster, Kind.HEALTH), data, qos=0)

    def _publish_result(
        self, result: ControlResult, on_done: Callable[[bool, str], None] | None
    ) -> None:
        cfg = self.config
        self.link.publish(
            topic(cfg.site, cfg.cluster, Kind.RESULT), encode(result), qos=1, on_done=on_done
        )

    def restart_in_place(self, reason: str) -> None:
        """Reboot: stop working, say offline, restart the hardware, come back as a new boot.

        Going down is a shutdown (``_halt``) and coming back is a start (``_boot``), so an
        in-place reboot resumes what was accepted and not finished exactly as a process
        restart does (docs/protocol.md §4, "Restart"). When the hardware cuts the power
        itself (:meth:`Hardware.reboot` returns True) there is nothing left to do: the box
        goes down and the next process start resumes from the same store.
        """
        cfg = self.config
        logger.warning("%s: rebooting (%s)", cfg.cluster, reason)
        if self._loop is None or self._link is None:
            return
        # Before the offline status, as a graceful stop does: what the playout reports while
        # it winds down still reaches the controller.
        self._halt()
        final = encode(
            Status(
                cluster=cfg.cluster, state="offline", ts=utcnow(), agent=__version__, reason=reason
            )
        )
        self._loop.close_link(self._link, (topic(cfg.site, cfg.cluster, Kind.STATUS), final))
        if self.hardware.reboot():
            return
        if self.reporter is not None:
            self.reporter.new_boot()
        self._link = self._new_link()
        self._boot()
        self._loop.add(self._link)

    # -- withdrawing (a schedule changed) -------------------------------------------------------

    def _handle_withdraw(self, command: WithdrawCommand) -> None:
        target = command.command
        broadcast = self._broadcast_of(target) or command.broadcast
        with self._withdraw_lock:
            waiting = self.player.withdraw(target)
            if not waiting:
                current = self.player.current
                seen = self._journal.get(target)
                if (current is not None and current.id == target) or seen in (
                    AckState.PLAYING.value,
                    AckState.INTERRUPTED.value,
                    *(s.value for s in _FINAL),
                ):
                    # Started or finished: a schedule change does not cut a bulletin off.
                    logger.info(
                        "%s: withdraw of %s ignored (%s)", self.config.cluster, target, seen
                    )
                    return
            self._withdrawn.add(target)
            self._journal.set(target, AckState.FAILED.value)
            self._pending.remove(target)
        logger.info("%s: withdrew %s", self.config.cluster, target)
        cfg = self.config
        ack = Ack(
            cluster=cfg.cluster,
            command=target,
            broadcast=broadcast,
            state=AckState.FAILED,
            ts=utcnow(),
            reason=WITHDRAWN,
        )
        self.link.publish(topic(cfg.site, cfg.cluster, Kind.ACK), encode(ack))

    def _broadcast_of(self, command_id: str) -> str | None:
        # The ack must carry the play command's own broadcast (the controller drops others).
        for waiting in self.player.pending():
            if waiting.id == command_id:
                return waiting.broadcast
        stored = self._pending.get(command_id)
        return stored.broadcast if stored is not None else None
