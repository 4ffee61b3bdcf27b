"""engine/subscriptions.py: status events fanned out per stream name."""

from __future__ import annotations

from engine.events import StreamEvent, StreamStatus
from engine.subscriptions import Subscriptions


def test_publish_reaches_the_subscribers_of_that_stream_only_once_each() -> None:
    subs = Subscriptions()
    a: list[StreamEvent] = []
    b: list[StreamEvent] = []
    assert subs.add("cam", a.append)
    assert not subs.add("cam", a.append)  # already subscribed
    assert subs.add("door", b.append)
    subs.publish(StreamStatus("cam", None))
    assert a == [StreamStatus("cam", None)] and b == []
    assert len(subs) == 2


def test_removing_and_a_subscription_that_outlives_its_stream() -> None:
    subs = Subscriptions()
    got: list[StreamEvent] = []
    subs.add("cam", got.append)
    subs.publish(StreamStatus("cam", None))  # removed ...
    subs.publish(StreamStatus("cam", None))  # ... and a new stream of that name: still heard
    assert len(got) == 2
    assert subs.remove("cam", got.append)
    assert not subs.remove("cam", got.append)
    subs.publish(StreamStatus("cam", None))
    assert len(got) == 2 and len(subs) == 0


def test_a_listener_may_unsubscribe_while_being_told() -> None:
    subs = Subscriptions()
    got: list[str] = []

    def once(ev: StreamEvent) -> None:
        got.append(ev.stream)
        subs.remove("cam", once)

    subs.add("cam", once)
    subs.publish(StreamStatus("cam", None))
    subs.publish(StreamStatus("cam", None))
    assert got == ["cam"]
