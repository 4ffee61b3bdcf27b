"""Prometheus metrics at /metrics: scraped from a real server and parsed with prometheus_client's own
parser; the counters move as frames and questions flow."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import TOKEN, Server, client, http_request, running_server, wait_for_frames
from web.auth import Viewer
from web.metrics import BusyClock

pytestmark = pytest.mark.server(sources=["demo"], fps=4.0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int, token: str | None = TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    res = await asyncio.to_thread(http_request, port, "GET", "/metrics", None, headers)
    assert res.status == 200, res.body
    assert res.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(res.body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_move_as_frames_and_questions_flow(srv: Server) -> None:
    await wait_for_frames(srv.engine, "demo", 1)
    before = await scrape(srv.port)
    frames = value(before, "livesight_stream_frames_total", stream="demo")
    assert frames >= 1
    assert value(before, "livesight_stream_state", stream="demo", state="live") == 1
    assert value(before, "livesight_stream_state", stream="demo", state="offline") == 0
    tiers = [value(before, "livesight_stream_memory_tokens", stream="demo", tier=str(t)) for t in range(8)]
    assert sum(tiers) > 0  # (tier 0 holds frames waiting for a clip; a tiny model makes one-frame clips)
    assert value(before, "livesight_stream_ingest_lag_seconds_count", stream="demo") >= 1
    assert value(before, "livesight_model_info", model="tiny-random") == 1
    assert value(before, "process_resident_memory_bytes") > 10_000_000
    assert ("livesight_question_queue_depth", frozenset()) in before

    async with client(srv.url) as ws:
        # One answered question, one refused by the engine (an unknown stream), one cancelled or answered.
        await ws.send({"type": "ask", "id": "a", "stream": "demo", "question": "What?", "max_new_tokens": 4})
        assert (await ws.next(lambda m: m.get("id") == "a" and m["type"] != "token"))["type"] == "answer"
        await ws.send({"type": "ask", "id": "b", "stream": "nope", "question": "What?"})
        assert (await ws.next(lambda m: m.get("id") == "b"))["code"] == "unknown_stream"
        await ws.send({"type": "ask", "id": "c", "stream": "demo", "question": "What?", "max_new_tokens": 1024})
        await ws.send({"type": "cancel", "id": "c"})
        ended = (await ws.next(lambda m: m.get("id") == "c" and m["type"] != "token", timeout=60))["type"]
        during = await scrape(srv.port)
        assert value(during, "livesight_websocket_connections") == 1
    await wait_for_frames(srv.engine, "demo", int(frames) + 2)
    after = await scrape(srv.port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    answered = 1 + (ended == "answer")
    assert delta("livesight_questions_total", outcome="answered", code="") == answered
    assert delta("livesight_questions_total", outcome="cancelled", code="") == (ended == "cancelled")
    assert delta("livesight_questions_total", outcome="failed", code="unknown_stream") == 1
    assert delta("livesight_time_to_first_token_seconds_count") == answered
    assert delta("livesight_answer_tokens_per_second_count") == answered
    assert delta("livesight_stream_frames_total", stream="demo") >= 2
    assert delta("livesight_stream_ingest_lag_seconds_count", stream="demo") >= 2
    assert delta("livesight_inference_busy_seconds_total", work="answer") > 0
    assert 0 < value(after, "livesight_inference_busy_ratio") <= 1
    assert value(after, "livesight_websocket_connections") == 0


async def test_a_token_is_needed_unless_metrics_are_public(srv: Server, tiny: SmolVLMAdapter) -> None:
    res = await asyncio.to_thread(http_request, srv.port, "GET", "/metrics")
    assert res.status == 401
    assert res.headers["www-authenticate"].startswith("Bearer")
    failures = value(await scrape(srv.port), "livesight_auth_failures_total")
    res = await asyncio.to_thread(http_request, srv.port, "GET", "/metrics", None, {"Authorization": "Bearer nope"})
    assert res.status == 401
    assert value(await scrape(srv.port), "livesight_auth_failures_total") == failures + 1
    assert (await asyncio.to_thread(http_request, srv.port, "POST", "/metrics", b"")).status == 405
    async with running_server(tiny, EngineSettings(), sources=(), metrics_public=True) as public:
        samples = await scrape(public.port, token=None)
        assert ("livesight_question_queue_depth", frozenset()) in samples


async def test_a_viewer_sees_only_its_own_streams_series(tiny: SmolVLMAdapter) -> None:
    viewer = Viewer("v", "viewer-token-1", frozenset({"yard"}))
    async with running_server(tiny, EngineSettings(fps=4.0), ["demo", "yard=demo"], viewers=[viewer]) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        await wait_for_frames(srv.engine, "yard", 1)
        admin = await scrape(srv.port)
        limited = await scrape(srv.port, "viewer-token-1")
    streams = {dict(labels).get("stream") for _, labels in admin} - {None}
    assert streams == {"demo", "yard"}
    assert {dict(labels).get("stream") for _, labels in limited} - {None} == {"yard"}
    assert ("livesight_question_queue_depth", frozenset()) in limited  # server-wide series name no stream


async def test_the_registry_is_the_servers_own(srv: Server, tiny: SmolVLMAdapter) -> None:
    """Two servers in one process count apart (no global registry)."""
    async with running_server(tiny, EngineSettings(), sources=()) as other:
        samples = await scrape(other.port)
        assert not any(dict(labels).get("stream") for _, labels in samples)
        assert value(samples, "livesight_questions_total", outcome="answered", code="") == 0


def test_busy_ratio_counts_the_window_only() -> None:
    now = [100.0]
    busy = BusyClock(lambda: now[0], window_s=10.0)
    now[0] = 110.0
    busy.start("ingest")
    now[0] = 112.0
    busy.stop()
    assert busy.ratio() == pytest.approx(0.2)
    busy.start("answer")
    now[0] = 117.0
    assert busy.ratio() == pytest.approx(0.7)  # the running span counts as it runs
    assert busy.totals() == {"answer": 5.0, "ingest": 2.0, "evaluate": 0.0, "describe": 0.0}
    busy.stop()
    now[0] = 130.0
    assert busy.ratio() == 0.0
    assert busy.totals() == {"answer": 5.0, "ingest": 2.0, "evaluate": 0.0, "describe": 0.0}
