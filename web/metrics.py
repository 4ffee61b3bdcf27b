"""Prometheus metrics (``GET /metrics``) through ``prometheus_client``, one registry per server.

Two sources. What happens is pushed by the engine through its observer seam (:class:`Metrics` is an
:class:`~engine.observer.EngineObserver`): frames reaching memory with their lag, questions ending, the
inference worker's busy spans. What is state is read from the engine at scrape time by a custom collector
(:class:`_Live`): streams (frames, drops, reconnects, state, memory per tier), the queue, connections,
authentication failures. The process collector adds ``process_resident_memory_bytes`` and friends.

A viewer's scrape carries only its own streams' series (every series labelled ``stream`` is filtered);
server-wide series name no stream and are the same for every token.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.events import Answered, Cancelled, Failed
from engine.observer import Work
from stream.source import SourceState
from web.protocol import ERROR_CODES, error_code

if TYPE_CHECKING:
    from engine.api import EngineAPI
    from web.webhooks import Webhooks

METRICS_PATH = "/metrics"
WORK: tuple[Work, ...] = ("answer", "ingest", "evaluate", "describe")
STATES = tuple(s.value for s in SourceState)
#: Seconds: time to first token, and a frame's lag from capture to memory.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Seconds of the inference worker one watch evaluation takes (one short prefill).
EVALUATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
BUSY_WINDOW_S = 60.0


class BusyClock:
    """How long the inference worker has been busy: in all per kind of work, and the fraction of the last
    ``window_s`` seconds (fewer just after the start). Keeps at most ``max_spans`` finished spans."""

    def __init__(self, clock: Callable[[], float], window_s: float = BUSY_WINDOW_S, max_spans: int = 10_000) -> None:
        self._clock = clock
        self.window_s = window_s
        self._born = clock()
        self._totals: dict[Work, float] = dict.fromkeys(WORK, 0.0)
        self._current: tuple[Work, float] | None = None
        self._spans: deque[tuple[float, float]] = deque(maxlen=max_spans)

    def start(self, work: Work) -> None:
        self._current = (work, self._clock())

    def stop(self) -> None:
        if self._current is None:
            return
        (work, since), now = self._current, self._clock()
        self._current = None
        self._totals[work] += now - since
        self._spans.append((since, now))
        while self._spans and self._spans[0][1] <= now - self.window_s:
            self._spans.popleft()

    def totals(self) -> dict[Work, float]:
        out = dict(self._totals)
        if self._current is not None:
            work, since = self._current
            out[work] += self._clock() - since
        return out

    def ratio(self) -> float:
        now = self._clock()
        low = max(now - self.window_s, self._born)
        spans = [*self._spans, *([(self._current[1], now)] if self._current else [])]
        busy = sum(max(0.0, end - max(start, low)) for start, end in spans)
        return min(1.0, busy / (now - low)) if now > low else 0.0


class Metrics:
    """The server's registry, fed by the engine (observer) and read from it (collector)."""

    def __init__(self, model_id: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.model_id = model_id
        self.registry = CollectorRegistry()
        self._engine: Callable[[], EngineAPI | None] = lambda: None
        self._connections: Callable[[], int] = lambda: 0
        self._auth_failures: Callable[[], int] = lambda: 0
        r = self.registry
        self.questions = Counter(
            "livesight_questions",
            "Questions the engine received, by outcome (answered, cancelled, failed) and error code when failed",
            ["outcome", "code"],
            registry=r,
        )
        self.ttft = Histogram(
            "livesight_time_to_first_token_seconds",
            "Answered questions: seconds from the question's arrival to its first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.token_rate = Histogram(
            "livesight_answer_tokens_per_second",
            "Answered questions: tokens generated per second, from the start of answering to the end",
            buckets=TOKEN_RATE_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "livesight_stream_ingest_lag_seconds",
            "Seconds from a frame's capture to its arrival in memory",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.evaluations = Counter(
            "livesight_watch_evaluations",
            "Watch evaluations, by stream and outcome (ok, failed)",
            ["stream", "outcome"],
            registry=r,
        )
        self.evaluations_dropped = Counter(
            "livesight_watch_evaluations_dropped",
            "Watch evaluations that came due while the previous one still waited (the worker was behind)",
            ["stream"],
            registry=r,
        )
        self.evaluation_seconds = Histogram(
            "livesight_watch_evaluation_seconds",
            "Seconds of the inference worker one watch evaluation took",
            buckets=EVALUATION_BUCKETS,
            registry=r,
        )
        self.alerts = Counter("livesight_alerts", "Alerts fired, by stream", ["stream"], registry=r)
        self.webhooks: Webhooks | None = None  # set by serve when alerts are delivered by webhook
        self.busy = BusyClock(clock)
        self._lag_streams: set[str] = set()
        for outcome in ("answered", "cancelled"):
            self.questions.labels(outcome, "")
        for code in ERROR_CODES:
            self.questions.labels("failed", code)
        r.register(_Live(self))
        ProcessCollector(registry=r)

    def bind(
        self, engine: Callable[[], EngineAPI | None], connections: Callable[[], int], failures: Callable[[], int]
    ) -> None:
        """Where scrapes read the engine (None while it starts), websocket connections and auth failures."""
        self._engine, self._connections, self._auth_failures = engine, connections, failures

    # --- the engine's observer -------------------------------------------------------------------
    def frame_ingested(self, stream: str, lag_s: float) -> None:
        self._lag_streams.add(stream)
        self.lag.labels(stream).observe(max(0.0, lag_s))

    def question_finished(self, event: Answered | Cancelled | Failed) -> None:
        if isinstance(event, Failed):
            self.questions.labels("failed", error_code(event.error)).inc()
            return
        if isinstance(event, Cancelled):
            self.questions.labels("cancelled", "").inc()
            return
        self.questions.labels("answered", "").inc()
        timing = event.timing
        self.ttft.observe(timing.ttft_ms / 1000)
        answering_s = (timing.total_ms - timing.queue_ms) / 1000
        tokens = event.context.completion_tokens
        if tokens and answering_s > 0:
            self.token_rate.observe(tokens / answering_s)

    def worker_busy(self, work: Work) -> None:
        self.busy.start(work)

    def worker_idle(self) -> None:
        self.busy.stop()

    def evaluation_finished(self, stream: str, seconds: float, *, ok: bool) -> None:
        self.evaluations.labels(stream, "ok" if ok else "failed").inc()
        if ok:
            self.evaluation_seconds.observe(seconds)

    def evaluation_dropped(self, stream: str) -> None:
        self.evaluations_dropped.labels(stream).inc()

    def alert_fired(self, stream: str) -> None:
        self.alerts.labels(stream).inc()

    # --- scrapes ---------------------------------------------------------------------------------
    def exposition(self, accept: str | None, streams: frozenset[str] | None = None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (Prometheus text by default, OpenMetrics when
        asked), and its content type; ``streams`` given: only those streams' series."""
        engine = self._engine()
        if engine is not None:  # forget the lag of streams that are gone
            for name in self._lag_streams - set(engine.stream_names()):
                self.lag.remove(name)
                self._lag_streams.discard(name)
        encode, content_type = choose_encoder(accept or "")
        source: Collector = self.registry if streams is None else _Visible(self.registry, streams)
        return encode(source), content_type


class _Live:
    """State read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._m
        info = GaugeMetricFamily("livesight_model_info", "The model answering questions", labels=["model"])
        info.add_metric([m.model_id], 1)
        yield info
        yield GaugeMetricFamily("livesight_websocket_connections", "Websocket connections open", value=m._connections())
        yield CounterMetricFamily(
            "livesight_auth_failures", "Failed authentications (every API)", value=m._auth_failures()
        )
        busy = CounterMetricFamily(
            "livesight_inference_busy_seconds", "Seconds the inference worker spent working, by work", labels=["work"]
        )
        for work, seconds in m.busy.totals().items():
            busy.add_metric([work], seconds)
        yield busy
        yield GaugeMetricFamily(
            "livesight_inference_busy_ratio",
            f"Fraction of the last {BUSY_WINDOW_S:g} s the inference worker was busy",
            value=m.busy.ratio(),
        )
        if m.webhooks is not None:
            st = m.webhooks.stats()
            deliveries = CounterMetricFamily(
                "livesight_webhook_deliveries",
                "Webhook deliveries: delivered, retried (an attempt failed), failed (gave up), dropped (outbox full)",
                labels=["outcome"],
            )
            for outcome, n in (
                ("delivered", st.delivered),
                ("retried", st.retried),
                ("failed", st.failed),
                ("dropped", st.dropped),
            ):
                deliveries.add_metric([outcome], n)
            yield deliveries
            yield GaugeMetricFamily("livesight_webhook_pending", "Webhook deliveries waiting", value=st.pending)
        engine = m._engine()
        if engine is None:
            return
        yield GaugeMetricFamily("livesight_question_queue_depth", "Questions waiting", value=engine.queued)
        watches = GaugeMetricFamily("livesight_watches", "Watches per stream", labels=["stream"])
        per_stream: dict[str, int] = {}
        for w in engine.watches():
            per_stream[w.stream] = per_stream.get(w.stream, 0) + 1
        for name, n in per_stream.items():
            watches.add_metric([name], n)
        yield watches
        yield from _streams(engine)


def _streams(engine: EngineAPI) -> Iterable[Metric]:
    s = ["stream"]
    frames = CounterMetricFamily("livesight_stream_frames", "Frames that reached memory", labels=s)
    dropped = CounterMetricFamily(
        "livesight_stream_dropped_frames", "Sampled frames lost before the model took them", labels=s
    )
    reconnects = CounterMetricFamily("livesight_stream_reconnects", "Camera reconnection attempts", labels=s)
    state = GaugeMetricFamily(
        "livesight_stream_state", "1 for the stream's state, 0 for the others", labels=[*s, "state"]
    )
    tokens = GaugeMetricFamily(
        "livesight_stream_memory_tokens", "In-context visual tokens per memory tier", labels=[*s, "tier"]
    )
    tier_frames = GaugeMetricFamily("livesight_stream_memory_frames", "Frames per memory tier", labels=[*s, "tier"])
    archived = GaugeMetricFamily(
        "livesight_stream_long_term_records", "Compact records of video that left the context", labels=s
    )
    age = GaugeMetricFamily("livesight_stream_last_frame_age_seconds", "Age of the newest frame in memory", labels=s)
    for i in engine.streams_info():
        frames.add_metric([i.name], i.frames)
        dropped.add_metric([i.name], i.dropped)
        reconnects.add_metric([i.name], i.reconnects)
        for value in STATES:
            state.add_metric([i.name, value], 1 if i.state == value else 0)
        for t in i.memory_tiers:
            tokens.add_metric([i.name, str(t.tier)], t.tokens)
            tier_frames.add_metric([i.name, str(t.tier)], t.frames)
        archived.add_metric([i.name], i.long_term)
        if i.last_frame_age_s is not None:
            age.add_metric([i.name], i.last_frame_age_s)
    yield from (frames, dropped, reconnects, state, tokens, tier_frames, archived, age)


class _Visible:
    """A registry's metrics without the series of streams a viewer may not see."""

    def __init__(self, registry: CollectorRegistry, streams: frozenset[str]) -> None:
        self._registry = registry
        self._keep = streams | {""}  # "": a series that names no stream

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            kept = copy.copy(family)
            kept.samples = [x for x in family.samples if x.labels.get("stream", "") in self._keep]
            yield kept
