"""A deliberately broken box for the conformance kit to fail: a small ClusterAgent variant.

It breaks exactly three rules and keeps every other one (signatures, refusals, stop,
emergencies, control), so the kit must fail exactly the checks of those rules:

- it forgets play command ids: a duplicate is played again (§5);
- it accepts commands that arrived already expired and plays them (§10);
- it ignores withdraw commands (valid ones: a forged or stale one is still refused) (§3).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from firmware_bridge.agent import ClusterAgent
from firmware_bridge.exceptions import CommandRefused, ProtocolError
from firmware_bridge.keys import read_key_file
from firmware_bridge.protocol import (
    AnyCommand,
    PlayCommand,
    WithdrawCommand,
    check_freshness,
    decode_command,
    encode,
    sign_command,
    utcnow,
)

logger = logging.getLogger(__name__)

BROKEN_CHECKS = {"duplicate-done", "duplicate-pending", "expired", "withdraw"}


def _fresh(command: AnyCommand) -> bool:
    try:
        check_freshness(command, utcnow())
    except CommandRefused:
        return False
    return True


class BrokenAgent(ClusterAgent):
    """Plays duplicates again, accepts expired commands, ignores withdraw."""

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        try:
            command = decode_command(payload)
            self._keys.verify(command, utcnow())
        except (ProtocolError, CommandRefused):
            # Badly formed, unsigned or forged: refused as the real agent does.
            super()._on_message(topic_name, payload)
            return
        if isinstance(command, WithdrawCommand) and _fresh(command):
            logger.warning("broken box: withdraw %s ignored", command.id)
            return
        if isinstance(command, PlayCommand):
            # Forget the id, so a redelivery is played again.
            self._journal._states.pop(command.id, None)
            if command.expires_at <= utcnow():
                # Take an expired command as fresh: re-sign it with a new lifetime.
                now = utcnow()
                fresh = command.model_copy(
                    update={"issued_at": now, "expires_at": now + timedelta(minutes=5)}
                )
                key = read_key_file(self._keys.path, self.config.site, self.config.cluster)[0]
                payload = encode(sign_command(fresh, key.secret, key.kid))
        super()._on_message(topic_name, payload)
