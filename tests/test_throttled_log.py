"""The shared throttle behind the controller's flood-proof warnings."""

from __future__ import annotations

from loudspeaker.throttled_log import Throttle


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_first_occurrence_reports_then_bursts_are_counted_into_the_next_report() -> None:
    clock = _Clock()
    th = Throttle(10.0, clock=clock)
    assert th.tick("a") == 1
    assert [th.tick("a") for _ in range(4)] == [0, 0, 0, 0]
    clock.t += 10.0
    assert th.tick("a") == 5  # the four held back and this one


def test_keys_are_throttled_apart() -> None:
    clock = _Clock()
    th = Throttle(10.0, clock=clock)
    assert th.tick("a") == 1
    assert th.tick("b") == 1
    assert th.tick("a") == 0
    assert th.tick("b", n=3) == 0
    clock.t += 10.0
    assert th.tick("b") == 4  # the three held back and this one
