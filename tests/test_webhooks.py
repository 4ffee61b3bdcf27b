"""Webhooks against a loopback receiver: a POST per alert and update, retries with backoff on failures that
can pass, none on a refusal, a bounded outbox that drops and counts, credentials never shown, and the
event loop never waiting."""

from __future__ import annotations

import json
import socket
import time

from engine.events import Alert, AlertUpdate, StreamStatus, TimelineEvent
from tests.support.receiver import receiving
from web.webhooks import Webhooks

EVENT = TimelineEvent(
    5, "alert", "cam", 2, "the lights are off", "2026-12-01T10:00:30.000+00:00", 30.0, None, None, 0.95, None, True
)


def hooks(urls: list[str], **kw: object) -> Webhooks:
    return Webhooks(urls, backoff_base_s=0.02, backoff_cap_s=0.1, timeout_s=2.0, **kw)  # type: ignore[arg-type]


def test_every_alert_and_update_is_posted_to_the_global_and_the_watchs_own_url() -> None:
    with receiving() as everyone, receiving() as own:
        w = hooks([everyone.url], watch_url=lambda watch: own.url if watch == 2 else None)
        w.start()
        w.on_event(Alert(EVENT))
        w.on_event(AlertUpdate(EVENT))
        w.on_event(StreamStatus("cam", None))  # not an alert: not delivered
        assert w.wait_idle(10)
        w.close()
        for r in (everyone, own):
            bodies = r.wait_for(2, 5)
            assert [b["type"] for b in bodies] == ["alert", "alert_update"]
            assert bodies[0]["event"] == 5 and bodies[0]["snapshot"] == "/v1/events/5/snapshot.jpg"
        assert w.stats().delivered == 4 and w.stats().failed == 0


def test_failures_that_can_pass_are_retried_with_backoff() -> None:
    with receiving(statuses=[503, 429]) as r:
        w = hooks([r.url])
        w.start()
        w.on_event(Alert(EVENT))
        assert w.wait_idle(10)
        w.close()
        assert len(r.wait_for(1, 5)) == 1 and r.attempts == 3
        st = w.stats()
        assert (st.delivered, st.retried, st.failed) == (1, 2, 0)
        assert st.last_error is not None and "HTTP 429" in st.last_error and "s3cr3t" not in st.last_error


def test_a_refusal_is_not_retried_and_an_unreachable_receiver_is_given_up_on() -> None:
    with receiving(statuses=[400]) as r:
        w = hooks([r.url])
        w.start()
        w.on_event(Alert(EVENT))
        assert w.wait_idle(10)
        w.close()
        assert r.attempts == 1 and w.stats().failed == 1
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = hooks([f"http://user:pw@127.0.0.1:{port}/x"], attempts=3)
    w.start()
    w.on_event(Alert(EVENT))
    assert w.wait_idle(10)
    w.close()
    st = w.stats()
    assert (st.retried, st.failed, st.delivered) == (2, 1, 0)
    assert st.last_error is not None and "pw" not in st.last_error and "attempt 3 of 3" in st.last_error


def test_the_outbox_is_bounded_and_the_loop_never_waits() -> None:
    with receiving(delay_s=0.5) as r:
        w = hooks([r.url], outbox=4, workers=1)
        w.start()
        started = time.perf_counter()
        for _ in range(10):
            w.on_event(Alert(EVENT))
        assert time.perf_counter() - started < 0.1  # queued, not sent, while the receiver is slow
        st = w.stats()
        assert st.dropped >= 5 and st.pending <= 5
        assert w.wait_idle(10)
        w.close()
        assert len(r.bodies) == 10 - w.stats().dropped
        assert json.dumps(r.bodies[0])  # plain JSON
