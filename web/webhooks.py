"""Webhooks: every alert (and every update of one) POSTed as JSON to the server's ``--webhook`` URLs and to
the watch's own, without ever holding up the engine.

The body is the websocket message itself (``{"type":"alert",...}`` or ``{"type":"alert_update",...}``; a
snapshot's URL is a path on this server, fetched with a bearer token). The event loop only queues: an
alert becomes one delivery per URL in a bounded outbox (:data:`OUTBOX`; when it is full the new delivery is
dropped and counted). Delivery threads (standard library ``http.client``: no redirects followed, explicit
connect and read timeouts, certificates verified for https) take the deliveries due first; a failure — a
refused connection, a timeout, a 5xx, 408 or 429 — is retried up to :data:`ATTEMPTS` times in all, after
capped exponential backoff with jitter (:class:`stream.backoff.Backoff`), without blocking the others. A
4xx other than those is not retried. Counts (delivered, retried, failed, dropped) and the last failure
are in ``/healthz`` (with a token) and ``/metrics``.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from engine.events import Alert, AlertUpdate, StreamEvent
from stream.backoff import Backoff
from web import protocol

log = logging.getLogger("livesight.webhooks")

#: Deliveries waiting (all URLs together), retries included.
OUTBOX = 256
#: Tries per delivery, the first included.
ATTEMPTS = 5
TIMEOUT_S = 5.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
WORKERS = 2
_RETRYABLE_STATUS = frozenset({408, 425, 429})

#: POSTs ``body`` to ``url``; returns the HTTP status, raises ``OSError`` (``http.client`` errors included)
#: when no response came.
Post = Callable[[str, bytes, float], int]


def redact(url: str) -> str:
    """A URL as logs and status show it: no credentials, query or fragment."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname or ''}{f':{p.port}' if p.port else ''}{p.path}"


def post(url: str, body: bytes, timeout: float) -> int:
    """One JSON POST with the standard library; the response body is read (at most 64 KiB) and dropped."""
    p = urlsplit(url)
    host, port = p.hostname or "", p.port
    conn: http.client.HTTPConnection
    if p.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json", "User-Agent": "livesight-webhook"}
    if p.username is not None:
        user = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(user).decode()
    try:
        conn.request("POST", (p.path or "/") + (f"?{p.query}" if p.query else ""), body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(64 * 1024)
        return int(resp.status)
    finally:
        conn.close()


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=0, compare=False)
    backoff: Backoff | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class WebhookStats:
    pending: int
    delivered: int
    retried: int
    failed: int  # gave up (attempts exhausted, or a 4xx)
    dropped: int  # the outbox was full
    last_error: str | None


class Webhooks:
    """Alert delivery by HTTP POST (see the module doc). ``start()`` listens to the engine and starts the
    delivery threads; ``close()`` stops them (what waits is dropped)."""

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        watch_url: Callable[[int], str | None] = lambda _watch: None,
        outbox: int = OUTBOX,
        attempts: int = ATTEMPTS,
        timeout_s: float = TIMEOUT_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        workers: int = WORKERS,
        send: Post = post,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = tuple(urls)
        self._watch_url = watch_url
        self._outbox = outbox
        self._attempts = attempts
        self._timeout = timeout_s
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._send = send
        self._clock = clock
        self._workers = workers
        self._heap: list[_Delivery] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._in_flight = 0
        self.delivered = self.retried = self.failed = self.dropped = 0
        self.last_error: str | None = None

    # --- the event loop's side (never blocks for long: one lock held for a heap push) --------------
    def on_event(self, ev: StreamEvent) -> None:
        """An engine event: alerts and their updates are queued for every URL that wants them."""
        if isinstance(ev, Alert):
            wire: dict[str, Any] = protocol.alert(ev)
        elif isinstance(ev, AlertUpdate):
            wire = protocol.alert_update(ev)
        else:
            return
        targets = list(self.urls)
        own = self._watch_url(ev.event.watch) if ev.event.watch is not None else None
        if own is not None and own not in targets:
            targets.append(own)
        if not targets:
            return
        body = protocol.dumps(wire).encode()
        for url in targets:
            self._queue(_Delivery(self._clock(), next(self._seq), url, body))

    def _queue(self, d: _Delivery) -> bool:
        with self._cond:
            if len(self._heap) >= self._outbox:
                self.dropped += 1
                self.last_error = (
                    f"outbox full ({self._outbox} deliveries waiting): an alert to {redact(d.url)} dropped"
                )
                log.warning("webhook %s", self.last_error)
                return False
            heapq.heappush(self._heap, d)
            self._cond.notify()
            return True

    def stats(self) -> WebhookStats:
        with self._cond:
            return WebhookStats(
                len(self._heap) + self._in_flight,
                self.delivered,
                self.retried,
                self.failed,
                self.dropped,
                self.last_error,
            )

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._run, name=f"webhook-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the delivery threads (blocking, at most about ``timeout`` plus one request's timeout)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout + self._timeout)
        self._threads.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing waits or is in flight (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    # --- delivery threads --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0].due > self._clock()):
                    wait = None if not self._heap else max(0.0, self._heap[0].due - self._clock())
                    self._cond.wait(wait)
                if self._stopping:
                    return
                d = heapq.heappop(self._heap)
                self._in_flight += 1
            try:
                self._deliver(d)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _deliver(self, d: _Delivery) -> None:
        d.attempt += 1
        try:
            status = self._send(d.url, d.body, self._timeout)
            why = None if 200 <= status < 300 else f"HTTP {status}"
            retry = status >= 500 or status in _RETRYABLE_STATUS
        except (OSError, http.client.HTTPException) as exc:
            why, retry = f"{type(exc).__name__}: {exc}", True
        if why is None:
            with self._cond:
                self.delivered += 1
            return
        message = f"POST to {redact(d.url)} failed (attempt {d.attempt} of {self._attempts}): {why}"
        if retry and d.attempt < self._attempts:
            if d.backoff is None:
                d.backoff = Backoff(*self._backoff)
            d.due = self._clock() + d.backoff.next()
            with self._cond:
                self.retried += 1
                self.last_error = message
            log.info("webhook %s; retrying", message)
            self._queue(d)
            return
        with self._cond:
            self.failed += 1
            self.last_error = message
        log.warning("webhook %s; giving up", message)
