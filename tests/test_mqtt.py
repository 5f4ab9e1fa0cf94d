"""The MQTT plumbing against a real mosquitto: reconnect, resubscribe, will, backoff."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from firmware_bridge.backoff import Backoff, Retrier
from firmware_bridge.exceptions import BrokerError
from firmware_bridge.mqtt import BrokerEndpoint, MqttLink, MqttLoop, Will
from loudspeaker.broker import EmbeddedBroker
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_backoff_grows_to_the_cap_and_resets() -> None:
    b = Retrier(Backoff(initial=1.0, cap=8.0))
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next_delay() == 1.0
    jittered = Backoff(initial=1.0, cap=8.0, jitter=0.2)
    delays = {round(jittered.delay(3), 6) for _ in range(50)}
    assert len(delays) > 1 and all(6.4 <= d <= 9.6 for d in delays)


def test_endpoint_parse() -> None:
    e = BrokerEndpoint.parse("mqtt://user:pw@broker.local:1884")
    assert (e.host, e.port, e.username, e.password) == ("broker.local", 1884, "user", "pw")
    assert "pw" not in repr(e) and "pw" not in e.url
    assert BrokerEndpoint.parse("mqtts://h").port == 8883
    with pytest.raises(BrokerError, match="mqtt://HOST"):
        BrokerEndpoint.parse("http://h:1")


def test_link_survives_broker_restart_and_resubscribes(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "b", supervise=False)
    broker.start()
    got: list[bytes] = []
    loop = MqttLoop("t")
    loop.start()
    sub = MqttLink(
        "sub",
        broker.endpoint,
        on_message=lambda t, p: got.append(p),
        subscriptions=("t/#",),
        keepalive=2,
    )
    pub = MqttLink("pub", broker.endpoint, on_message=lambda t, p: None, keepalive=2)
    loop.add(sub)
    loop.add(pub)
    try:
        assert sub.connected.wait(10) and pub.connected.wait(10)
        # `connected` means subscribed (SUBACK, not just CONNACK): one publish is enough.
        pub.publish("t/1", b"before")
        assert wait_until(lambda: b"before" in got, 10)
        broker.kill()
        assert wait_until(lambda: not sub.connected.is_set(), 10)
        acked = threading.Event()
        # Published while the broker is down: paho keeps QoS 1 until it reconnects.
        pub.publish("t/2", b"during", on_done=lambda ok, r: acked.set() if ok else None)
        broker.start()
        assert sub.connected.wait(20) and pub.connected.wait(20)
        assert acked.wait(10)
        # The subscriber's session died with the broker, so "during" may have reached the
        # broker before the subscription was renewed; what matters is that it was not lost
        # on the publisher's side (acked above) and that the subscription came back.
        pub.publish("t/3", b"after")
        assert wait_until(lambda: b"after" in got, 10)
        assert sub.reconnects >= 1
    finally:
        loop.close_link(sub)
        loop.close_link(pub)
        loop.stop()
        broker.stop()


def test_last_will_marks_a_vanished_client_offline(mosquitto: EmbeddedBroker) -> None:
    seen: list[bytes] = []
    loop = MqttLoop("w")
    loop.start()
    watcher = MqttLink(
        "watcher",
        mosquitto.endpoint,
        on_message=lambda t, p: seen.append(p),
        subscriptions=("s/#",),
    )
    loop.add(watcher)
    other_loop = MqttLoop("dying")
    other_loop.start()
    dying = MqttLink(
        "dying",
        mosquitto.endpoint,
        on_message=lambda t, p: None,
        will=Will("s/dying", b"offline"),
        keepalive=1,
    )
    other_loop.add(dying)
    try:
        assert watcher.connected.wait(10) and dying.connected.wait(10)
        # Stop driving the client without a DISCONNECT: the broker must notice via keepalive.
        other_loop.stop()
        assert wait_until(lambda: b"offline" in seen, 10)
    finally:
        loop.close_link(watcher)
        loop.stop()


@pytest.mark.integration
def test_a_message_published_before_the_link_is_added_goes_out_once_it_is(
    mosquitto: EmbeddedBroker,
) -> None:
    # An agent's workers may report before its new link is adopted (after a reboot in
    # place): the report must wait for the link, not raise in the worker.
    got: list[bytes] = []
    loop = MqttLoop("early")
    loop.start()
    sub = MqttLink(
        "sub", mosquitto.endpoint, on_message=lambda t, p: got.append(p), subscriptions=("e/#",)
    )
    loop.add(sub)
    early = MqttLink("early-pub", mosquitto.endpoint, on_message=lambda t, p: None)
    acked = threading.Event()
    try:
        assert sub.connected.wait(10)
        early.publish("e/1", b"before add", on_done=lambda ok, _r: acked.set() if ok else None)
        loop.add(early)
        assert acked.wait(10)
        assert wait_until(lambda: got == [b"before add"], 10)
    finally:
        loop.close_link(sub)
        loop.close_link(early)
        loop.stop()
