"""The commune hall's audio output, shared by the serial gateway's FM/wired clusters.

Old FM/wired receivers cannot fetch audio: the hall plays it on its one output (the
transmitter or the wired line) and the gateway switches the right receivers on over the
RS-485 bus for the length of the item. Each serial cluster is still its own
:class:`~firmware_bridge.agent.ClusterAgent` with its own player; its
:class:`ReceiverSink` hands every item to the one :class:`HallOutput`, which decides what
goes on air. The rules (``docs/gateway.md``):

1. **Same item, one play.** Items of the same broadcast with the same audio that reach the
   hall within ``gather_s`` of each other (or while they wait for the output) play *once*,
   with all their receivers switched on together; each cluster is acknowledged for itself.
2. **Different items never mix: they are serialised.** The output plays one item at a
   time; of the waiting ones, emergency before priority before normal, then arrival order.
   A cluster whose item arrives while the same item is already on air waits and hears it
   from the start on the next play, never a truncated one.
3. **An emergency pre-empts.** If an emergency waits while a normal or priority item is on
   air, that item is interrupted in every cluster hearing it (re-queued and replayed after,
   acknowledged ``interrupted``), exactly as an emergency pre-empts on an IP cluster.
4. **A receiver that does not switch on fails alone.** Its cluster's item fails with the
   reason; the others play.
5. **Off after.** A receiver the gateway switched on is switched off when the item ends (or
   when its cluster stops the item); one that was already on (``cluster power on``) stays on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge.abc import AudioSink, PlayResult
from firmware_bridge.exceptions import HardwareError, SinkError
from firmware_bridge.mcu_hardware import McuHardware
from firmware_bridge.player import Player
from firmware_bridge.protocol import Priority

logger = logging.getLogger(__name__)

_RANK = {Priority.EMERGENCY: 0, Priority.PRIORITY: 1, Priority.NORMAL: 2}
_NORMAL_RANK = 2


@dataclass(eq=False)
class HallRequest:
    """One cluster asking for one item on air (made by :class:`ReceiverSink`)."""

    cluster: str
    key: tuple[str, str]  # (broadcast id, audio file name): equal keys play together
    rank: int  # 0 emergency, 1 priority, 2 normal
    path: Path
    duration_s: float
    stop: threading.Event  # the cluster's own player sets it to stop or pre-empt
    switch_on: Callable[[], bool]  # returns whether the receiver was on already
    switch_off: Callable[[], None]
    preempt: Callable[[str], bool]
    title: str = ""
    arrived: float = field(default_factory=time.monotonic)
    seq: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: PlayResult | None = None
    error: str | None = None
    was_on: bool = False


@dataclass(frozen=True)
class OnAir:
    """One play on the hall output: what, for whom, and how it ended (for logs and tests)."""

    key: tuple[str, str]
    clusters: tuple[str, ...]
    result: str
    started: float
    ended: float


class HallOutput:
    """The hall's one audio output. ``start()`` runs its thread; ``play()`` blocks a caller.

    ``sink`` is the real output (:class:`~firmware_bridge.sinks.SystemPlayerSink` in the
    hall, a simulated sink in tests). ``gather_s`` is how long the first cluster's item
    waits for the same item from other clusters before going on air.
    """

    def __init__(self, sink: AudioSink, *, gather_s: float = 0.3, poll_s: float = 0.02) -> None:
        if not 0 <= gather_s <= 5:
            raise ValueError(f"gather_s {gather_s} must be between 0 and 5 seconds")
        self.sink = sink
        self.gather_s = gather_s
        self.poll_s = poll_s
        self.history: list[OnAir] = []
        self._waiting: list[HallRequest] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the audio output and start deciding what goes on air."""
        self.sink.start()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="hall-output", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop what plays, fail what waits, close the output."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for request in waiting:
            self._finish(request, error="the gateway is shutting down")
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.sink.close()

    def play(self, request: HallRequest) -> PlayResult:
        """Queue ``request`` and wait for its end; ``SinkError`` says why it did not play."""
        with self._cond:
            if self._closing or self._thread is None:
                raise SinkError("the hall audio output is not running")
            request.seq = next(self._seq)
            self._waiting.append(request)
            self._cond.notify_all()
        while not request.done.wait(0.5):
            if self._thread is None:
                raise SinkError("the hall audio output stopped")
        if request.error is not None:
            raise SinkError(request.error)
        return request.result or PlayResult.STOPPED

    # -- hall thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            members = self._gather()
            if members is None:
                return
            try:
                self._on_air(members)
            except Exception as exc:
                # A bug here must not leave clusters waiting for ever nor stop the hall.
                logger.exception("hall output failed on %s", members[0].key)
                for request in members:
                    if not request.done.is_set():
                        self._finish(request, error=f"gateway error: {exc}")

    def _gather(self) -> list[HallRequest] | None:
        with self._cond:
            while not self._closing:
                for request in [request for request in self._waiting if request.stop.is_set()]:
                    self._waiting.remove(request)
                    self._finish(request, PlayResult.STOPPED)
                if not self._waiting:
                    self._cond.wait(0.2)
                    continue
                lead = min(self._waiting, key=lambda request: (request.rank, request.seq))
                left = lead.arrived + self.gather_s - time.monotonic()
                if left > 0:
                    # Re-evaluated on every arrival: an emergency may take the lead.
                    self._cond.wait(min(left, 0.05))
                    continue
                members = [request for request in self._waiting if request.key == lead.key]
                self._waiting = [request for request in self._waiting if request.key != lead.key]
                return members
            return None

    def _emergency_waiting(self, key: tuple[str, str]) -> HallRequest | None:
        with self._cond:
            return next(
                (request for request in self._waiting if request.rank == 0 and request.key != key),
                None,
            )

    def _on_air(self, members: list[HallRequest]) -> None:
        lead = members[0]
        live: list[HallRequest] = []
        for request in members:
            if request.stop.is_set():
                self._finish(request, PlayResult.STOPPED)
                continue
            try:
                request.was_on = request.switch_on()
            except HardwareError as exc:
                logger.warning("%s: receiver not switched on: %s", request.cluster, exc)
                self._finish(request, error=f"receiver did not switch on: {exc}")
                continue
            live.append(request)
        if not live:
            return
        started = time.monotonic()
        logger.info(
            "on air: %s for %s",
            lead.title or lead.key[0],
            ", ".join(request.cluster for request in live),
        )
        clusters = tuple(request.cluster for request in live)
        stop = threading.Event()
        outcome: dict[str, PlayResult | str] = {}

        def play() -> None:
            try:
                outcome["result"] = self.sink.play(lead.path, duration_s=lead.duration_s, stop=stop)
            except SinkError as exc:
                outcome["error"] = f"hall audio output failed: {exc}"
            except Exception as exc:
                logger.exception("hall audio output crashed")
                outcome["error"] = f"hall audio output crashed: {exc}"

        player = threading.Thread(target=play, name="hall-play", daemon=True)
        player.start()
        preempted = False
        while player.is_alive():
            player.join(self.poll_s)
            for request in [request for request in live if request.stop.is_set()]:
                # This cluster stopped or was pre-empted: off air now, the others go on.
                live.remove(request)
                self._release(request)
                self._finish(request, PlayResult.STOPPED)
            if not live or self._closing:
                stop.set()
            elif not preempted and lead.rank > 0:
                urgent = self._emergency_waiting(lead.key)
                if urgent is not None:
                    preempted = True
                    why = f"interrupted by emergency: {urgent.title or urgent.key[0]}"
                    for request in live:
                        if not request.preempt(why):
                            logger.warning("%s: could not pre-empt its item", request.cluster)
        error = outcome.get("error")
        result = outcome.get("result")
        if error is None and self._closing and result is not PlayResult.COMPLETED:
            error = "the gateway shut down during playback"
        for request in live:
            self._release(request)
            if isinstance(error, str):
                self._finish(request, error=error)
            else:
                self._finish(
                    request, result if isinstance(result, PlayResult) else PlayResult.STOPPED
                )
        self.history.append(
            OnAir(
                lead.key,
                clusters,
                str(error) if error else str(result),
                started,
                time.monotonic(),
            )
        )

    def _release(self, request: HallRequest) -> None:
        if request.was_on:
            return
        try:
            request.switch_off()
        except HardwareError as exc:
            # Left on it hums, but the item itself played: report it in the cluster's health.
            logger.warning("%s: receiver not switched off after playback: %s", request.cluster, exc)

    @staticmethod
    def _finish(
        request: HallRequest, result: PlayResult | None = None, *, error: str | None = None
    ) -> None:
        request.result, request.error = result, error
        request.done.set()


class ReceiverSink(AudioSink):
    """One serial cluster's audio path: its receiver on the bus, the audio from the hall.

    The cluster's agent plays into this sink as into any other; the sink switches the
    receiver (through ``hardware``) and shares the hall output with the other serial
    clusters. :meth:`bind` gives it the agent's player, so it knows which broadcast plays
    and can pre-empt it for another cluster's emergency.
    """

    name = "hall"

    def __init__(self, cluster: str, hall: HallOutput, hardware: McuHardware) -> None:
        self.cluster = cluster
        self.hall = hall
        self.hardware = hardware
        self._player: Player | None = None

    def bind(self, player: Player) -> None:
        """The player of this cluster's agent (call before the agent starts)."""
        self._player = player

    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        if not path.is_file():
            raise SinkError(f"audio file {path} is missing")
        player = self._player
        command = player.current if player is not None else None
        if command is not None:
            key = (command.broadcast or command.id, path.name)
            rank, title = _RANK[command.priority], command.title or command.broadcast or ""
        else:
            key, rank, title = (f"local:{self.cluster}", path.name), _NORMAL_RANK, path.name
        return self.hall.play(
            HallRequest(
                cluster=self.cluster,
                key=key,
                rank=rank,
                path=path,
                duration_s=duration_s,
                stop=stop,
                switch_on=self._switch_on,
                switch_off=lambda: self._switch(False),
                preempt=player.preempt if player is not None else (lambda why: False),
                title=title,
            )
        )

    def _switch_on(self) -> bool:
        if self.hardware.relays_closed():
            return True
        self._switch(True)
        return False

    def _switch(self, on: bool) -> None:
        if self.hardware.set_amplifier_power(on) != on:
            raise HardwareError(
                f"{self.hardware.where}: relay 1 stayed {'on' if not on else 'off'}"
            )
