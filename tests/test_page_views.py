"""What the page shows, in a real headless Chromium against a real server: every stream's newest frame as
a thumbnail that refreshes, the memory as a bar of tiers over time that matches what ``streams`` says, an
answer's context span (clock times, stream times, recalled clips, detail, guided), the ask options as the
server receives them, and watches and the timeline (a watch added in the page, its alert with the
snapshot). Screenshots at desktop and 420 px widths go to the test artefacts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine, EngineSettings, Question
from engine.events import AnswerContext, Answered, QuestionEvent
from engine.recall import OFF, RecallRequest
from models.adapter import ModelAdapter
from models.families.smolvlm import SmolVLMAdapter
from store.archive import Archive
from store.events import EventStore
from stream.demo import DemoSource, render
from stream.factory import make_source
from stream.source import Source, SourceState, ThreadedSource
from stream.spec import SourceSpec
from tests.support.chromium import Chromium
from tests.support.dark import dark_model
from tests.support.page import (
    CONTROL_PROBLEMS,
    NO_SIDEWAYS_SCROLL,
    ScriptedModel,
    Shots,
    connect,
    js,
    open_page,
    submit,
)
from tests.support.server import TOKEN, Server, client, info, running_server, until, wait_for_frames

CLIP_S = 40.0  # the recorded stream's length: 80 frames at 2 fps, read as fast as the model takes them
SETTINGS = EngineSettings(fps=2.0, budget=256, recall_tokens=64)  # a small budget: several tiers fill


def card(name: str) -> str:
    """A JavaScript expression for stream ``name``'s card on the page."""
    return f"document.querySelector('.card[data-stream=' + CSS.escape({js(name)}) + ']')"


def stream_time(s: float) -> str:
    """Stream seconds as the page writes them: m:ss or h:mm:ss, with tenths when there are any."""
    whole = int(s)
    tenths = round((s - whole) * 10)
    h, m, sec = whole // 3600, whole % 3600 // 60, whole % 60
    base = f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
    return f"{base}.{tenths}" if 0 < tenths < 10 else base


def span_text(start: float, end: float) -> str:
    """A span of stream seconds as the page writes it (one moment as that moment)."""
    return stream_time(start) if stream_time(start) == stream_time(end) else f"{stream_time(start)}–{stream_time(end)}"


def sources(spec: SourceSpec, fps: float) -> Source:
    """``clip``: the demo scene's first 40 s as a recording (it ends); anything else as the server makes it."""
    if spec.name == "clip":
        return DemoSource(spec.name, fps, lossless=True, duration=CLIP_S)
    return make_source(spec, fps)


@asynccontextmanager
async def archived_server(adapter: ModelAdapter, tmp_path: Path) -> AsyncIterator[Server]:
    """A live ``demo`` and a finished recording ``clip``, with an archive; ``clip`` wholly archived."""
    archive = Archive(tmp_path / "archive", model="tiny")
    archive.start()
    try:
        async with running_server(adapter, SETTINGS, ("demo", "clip=demo"), make=sources, archive=archive) as srv:

            def clip_done() -> bool:
                s = info(srv.engine, "clip")
                return s is not None and s.state == "ended" and s.archive is not None and s.archive.clips == s.frames

            await until(clip_done, 60, "the recording read and archived")
            await wait_for_frames(srv.engine, "demo", 1)
            yield srv
    finally:
        await asyncio.to_thread(archive.close)


async def streams_message(srv: Server) -> dict[str, dict[str, Any]]:
    """What ``streams`` says, read over a websocket of the test's own: name -> the stream's fields."""
    async with client(srv.url) as ws:
        await ws.send({"type": "streams"})
        msg = await ws.next(lambda m: m["type"] == "streams")
    return {s["name"]: s for s in msg["streams"]}


#: Whether a card's thumbnail is a picture the browser decoded and drew.
DRAWN = "((c) => c && c.querySelector('img').naturalWidth > 0 && c.querySelector('img').dataset.drawn === '1')"

BAR = """((c) => {
  const bar = c.querySelector('.tiers'), box = bar.getBoundingClientRect();
  const read = (s) => { const r = s.getBoundingClientRect();
    return {tier: s.dataset.tier === undefined ? null : Number(s.dataset.tier), start: Number(s.dataset.start),
            end: Number(s.dataset.end), frames: Number(s.dataset.frames ?? -1), tokens: Number(s.dataset.tokens ?? -1),
            x0: r.left, x1: r.right}; };
  return {lo: Number(bar.dataset.lo), hi: Number(bar.dataset.hi), left: box.left, width: box.width,
          tiers: [...bar.querySelectorAll('.context .seg')].map(read),
          archive: [...bar.querySelectorAll('.archive .seg')].map(read),
          legend: c.querySelector('.legend').textContent, summary: c.querySelector('.memsum').textContent};
})(CARD)"""


def check_bar(bar: dict[str, Any], s: dict[str, Any]) -> None:
    """The page's bar for stream ``s`` (its ``streams`` fields) shows exactly its tiers and its archive, each
    where its time span lies on the bar's axis."""
    tiers = [t for t in s["memory_tiers"] if t["frames"] > 0]
    assert len(tiers) >= 3, tiers  # the test means something only with several tiers filled
    shown = [(t["tier"], t["start"], t["end"], t["frames"], t["tokens"]) for t in bar["tiers"]]
    assert shown == [(t["tier"], t["span"][0], t["span"][1], t["frames"], t["tokens"]) for t in tiers]
    archive = s["archive"]["span"]
    assert [(a["start"], a["end"]) for a in bar["archive"]] == [tuple(archive)]
    ends = [x for t in tiers for x in t["span"]] + list(archive) + list(s["memory_span"])
    assert (bar["lo"], bar["hi"]) == (min(ends), max(ends))
    scale = bar["width"] / (bar["hi"] - bar["lo"])
    for seg in bar["tiers"] + bar["archive"]:
        assert seg["x0"] == pytest.approx(bar["left"] + (seg["start"] - bar["lo"]) * scale, abs=1.5), seg
        width = max((seg["end"] - seg["start"]) * scale, 3)  # a span of one frame still shows
        assert seg["x1"] - seg["x0"] == pytest.approx(width, abs=1.5), seg
    # Older tiers lie to the left of newer ones, as time runs.
    assert [t["tier"] for t in sorted(bar["tiers"], key=lambda t: t["x0"])] == sorted(t["tier"] for t in tiers)[::-1]
    for t in tiers:
        assert f"{t['frames']} frames" in bar["legend"]
    assert f"{s['memory_frames']} frames in {s['memory_tokens']} tokens" in bar["summary"]
    span = f"archived {stream_time(archive[0])}–{stream_time(archive[1])}, {s['archive']['clips']} clips"
    assert span in bar["summary"], bar["summary"]


async def test_thumbnails_load_and_the_tiers_bar_reflects_streams(
    tiny: SmolVLMAdapter, tmp_path: Path, shots: Shots
) -> None:
    async with archived_server(tiny, tmp_path) as srv, open_page(srv.port, tmp_path / "profile", 1280, 800) as page:
        await connect(page)
        for name in ("demo", "clip"):
            await page.wait_for(f"{DRAWN}({card(name)})", 20, f"{name}'s thumbnail")
            img = await page.evaluate(
                f"(({{i}}) => ({{w: i.naturalWidth, h: i.naturalHeight, src: i.src, bytes: Number(i.dataset.bytes),"
                f" t: Number(i.dataset.streamTime)}}))({{i: {card(name)}.querySelector('img')}})"
            )
            assert (img["w"], img["h"]) == (640, 360), img  # a whole demo frame, decoded and drawn
            assert img["src"].startswith("blob:") and img["bytes"] > 1000, img
        # The recording's thumbnail is its last frame; the live stream's refreshes on its own.
        assert await page.evaluate(f"Number({card('clip')}.querySelector('img').dataset.streamTime)") == CLIP_S - 0.5
        first = await page.evaluate(f"Number({card('demo')}.querySelector('img').dataset.streamTime)")
        await page.wait_for(
            f"Number({card('demo')}.querySelector('img').dataset.streamTime) > {first}", 10, "a newer thumbnail"
        )
        # The token went in headers only: no URL the page fetched carries it.
        urls = await page.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
        assert any("/v1/streams/demo/snapshot.jpg" in u for u in urls), urls
        assert not any(TOKEN in u for u in urls), urls
        assert await page.evaluate(f"{card('demo')}.dataset.state") == "live"
        assert await page.evaluate(f"{card('clip')}.dataset.state") == "ended"

        # The bar of the finished recording against the `streams` message the test reads itself.
        s = (await streams_message(srv))["clip"]
        check_bar(await page.evaluate(BAR.replace("CARD", card("clip"))), s)
        await shots.take(page, "streams-desktop")
        assert await page.evaluate(NO_SIDEWAYS_SCROLL)

        await page.viewport(420, 800)
        await page.evaluate(f"{card('clip')}.scrollIntoView()")
        check_bar(await page.evaluate(BAR.replace("CARD", card("clip"))), s)  # laid out anew, still right
        await shots.take(page, "streams-narrow")
        assert await page.evaluate(NO_SIDEWAYS_SCROLL)
        assert await page.evaluate(CONTROL_PROBLEMS) == []


@dataclass
class Received:
    """The questions the engine received, and the context of each answer it sent."""

    questions: list[Question]
    contexts: dict[str, AnswerContext]


@contextmanager
def recording(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Received]:
    seen = Received([], {})
    submit_question = engine.submit

    def submit(q: Question) -> None:
        seen.questions.append(q)
        reply = q.reply

        def tapped(ev: QuestionEvent) -> None:
            if isinstance(ev, Answered):
                seen.contexts[q.id] = ev.context
            reply(ev)

        q.reply = tapped
        submit_question(q)

    monkeypatch.setattr(engine, "submit", submit)
    yield seen


async def ask_with(page: Chromium, question: str, stream: str, **options: object) -> str:
    """Ask ``question`` about ``stream`` with the form's options set as a user would; returns its id."""
    await page.evaluate(
        f"$('stream').value = {js(stream)}; $('stream').dispatchEvent(new Event('change'));"
        f"$('guided').value = {js(options.get('guided', ''))};"
        f"$('recall').value = {js(options.get('recall', 'auto'))}; $('recall').dispatchEvent(new Event('change'));"
        f"$('detail').checked = {js(bool(options.get('detail')))};"
        f"$('recall-from').value = {js(options.get('start', ''))}; $('recall-to').value = {js(options.get('end', ''))}"
    )
    qid = await submit(page, question)
    await page.wait_for(f"$('answer-{qid}').dataset.done === '1'", 60, f"the answer to {qid}")
    return qid


async def test_an_answer_shows_its_span_and_the_options_reach_the_server(
    tiny: SmolVLMAdapter, scripted: ScriptedModel, tmp_path: Path, shots: Shots, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with archived_server(tiny, tmp_path) as srv, open_page(srv.port, tmp_path / "profile", 1280, 800) as page:
        with recording(srv.engine, monkeypatch) as seen:
            await connect(page)
            await page.wait_for("$('stream').options.length === 2", 10, "both streams to ask about")
            # The live stream, recall off, the newest frame in detail: its span in clock times.
            live = await ask_with(page, "What is there?", "demo", recall="off", detail=True)
            q = seen.questions[-1]
            assert (q.stream, q.recall, q.detail, q.guided) == ("demo", OFF, True, None)
            ctx = seen.contexts[q.id]
            assert ctx.clock_start is not None and ctx.clock_end is not None and ctx.detail
            # A span inside one clock second reads as that second (the page's rule for one moment).
            first, last = ctx.clock_start[11:19], ctx.clock_end[11:19]
            expected = first if first == last else f"{first}–{last}"
            assert await page.evaluate(f"$('span-{live}').textContent") == expected
            meta = await page.evaluate(f"$('meta-{live}').textContent")
            assert meta.startswith(f"{ctx.frames} frames, {ctx.tokens} tokens of context: ")
            assert "newest frame in detail" in meta and "recalled" not in meta
            span = await page.evaluate(f"({{...$('span-{live}').dataset}})")
            assert (float(span["start"]), float(span["end"])) == (ctx.start, ctx.end)

            # The recording, with a window of stream seconds to recall: its span and the recalled clips.
            rec = await ask_with(page, "What happened first?", "clip", recall="window", start="0", end="4")
            q = seen.questions[-1]
            assert (q.stream, q.recall, q.detail) == ("clip", RecallRequest("window", stream_time=(0.0, 4.0)), False)
            ctx = seen.contexts[q.id]
            assert ctx.start is not None and ctx.end is not None and ctx.clock_start is None
            assert ctx.recall == "time" and ctx.recalled, ctx
            assert await page.evaluate(f"$('span-{rec}').textContent") == f"{span_text(ctx.start, ctx.end)}"
            recalled = await page.evaluate(
                f"[...$('recalled-{rec}').querySelectorAll('.rspan')].map((e) => e.textContent)"
            )
            assert recalled == [
                f"{span_text(r.start, r.end)} ({r.frames} frame{'' if r.frames == 1 else 's'})" for r in ctx.recalled
            ]
            assert "recalled (by time)" in await page.evaluate(f"$('recalled-{rec}').textContent")

            # Guided: a fresh prefill that drops tokens inside the model, said so under the answer.
            guided = await ask_with(page, "Anything moving?", "clip", guided="uniform", recall="off")
            q = seen.questions[-1]
            assert (q.guided, q.recall) == ("uniform", OFF)
            assert seen.contexts[q.id].guided == "uniform"
            assert "guided: uniform" in await page.evaluate(f"$('flags-{guided}').textContent")
            assert [q.detail for q in seen.questions] == [True, False, False]

            await page.wait_for(f"{DRAWN}({card('demo')}) && {DRAWN}({card('clip')})", 20, "the thumbnails")
            assert await page.evaluate("$('state').textContent") == "ended"  # the stream asked about last
            await shots.take(page, "answers-desktop")
            assert await page.evaluate(NO_SIDEWAYS_SCROLL)
            await page.viewport(420, 800)
            await page.evaluate(f"$('meta-{rec}').scrollIntoView()")
            await shots.take(page, "answers-narrow")
            assert await page.evaluate(NO_SIDEWAYS_SCROLL)
            assert await page.evaluate(f"$('meta-{rec}').scrollWidth <= $('log').clientWidth")


class DarkRoom(ThreadedSource):
    """A live camera in a room with the lights off (the demo scene at 0:35), a frame each sampling period."""

    def __init__(self, name: str, fps: float) -> None:
        super().__init__(name, "dark room", fps)
        self.wall_clock = True

    def _run(self) -> None:
        self.stats.state = SourceState.LIVE
        t = 0.0
        while self._sleep(self._sampler.period if t else 0.0):
            self._emit(t, render(35.0 + t % 5, 320, 180))
            t += self._sampler.period


async def watches_message(srv: Server) -> list[dict[str, Any]]:
    async with client(srv.url) as ws:
        await ws.send({"type": "watches", "id": "w"})
        return list((await ws.next(lambda m: m["type"] == "watches"))["watches"])


async def test_a_watch_added_in_the_page_fires_and_its_alert_shows_with_its_snapshot(
    tiny: SmolVLMAdapter, tmp_path: Path, shots: Shots
) -> None:
    store = EventStore(tmp_path / "events")
    store.start()
    try:
        async with (
            running_server(
                dark_model(tiny),
                EngineSettings(fps=2.0),
                ("room=demo",),
                make=lambda s, f: DarkRoom(s.name, f),
                events=store,
            ) as srv,
            open_page(srv.port, tmp_path / "profile", 1280, 800) as page,
        ):
            await wait_for_frames(srv.engine, "room", 1)
            await connect(page)
            await page.wait_for("$('watch-stream').value === 'room'", 10, "the stream to watch")
            # As a user would: type the condition, set the period, click Add watch.
            await page.click("$('condition')")
            await page.type_text("the lights are off")
            await page.evaluate("$('every').value = '1'")
            await page.click("$('addwatch')")
            await until_async(lambda: watches_message(srv), lambda ws: len(ws) == 1, 15, "the watch on the server")
            (w,) = await watches_message(srv)
            assert (w["stream"], w["condition"], w["every_s"], w["origin"]) == (
                "room",
                "the lights are off",
                1.0,
                "api",
            )
            row = f"document.querySelector('#watches li[data-watch=\"{w['id']}\"]')"
            await page.wait_for(f"{row} !== null", 10, "the watch listed on the page")
            assert "the lights are off" in await page.evaluate(f"{row}.textContent")

            # It fires (the room is dark): the pushed alert is on the timeline with its snapshot drawn.
            entry = "document.querySelector('#timeline li[data-kind=\"alert\"]')"
            await page.wait_for(f"{entry} && {entry}.querySelector('img').naturalWidth > 0", 30, "the alert's snapshot")
            async with client(srv.url) as ws:
                await ws.send({"type": "events", "id": "e", "stream": "room"})
                (event,) = (await ws.next(lambda m: m["type"] == "events"))["events"]
            assert await page.evaluate(f"Number({entry}.dataset.event)") == event["id"]
            assert await page.evaluate(f"{entry}.querySelector('img').naturalWidth") == 320  # the room's frame
            head = await page.evaluate(f"{entry}.querySelector('.ehead').textContent")
            assert head.startswith(f"{event['time'][11:19]} · room · the lights are off · P(yes) ")
            await page.wait_for(f"{row}.dataset.state === 'firing'", 10, "the watch shown firing")
            await page.wait_for(f"{DRAWN}({card('room')})", 10, "the room's thumbnail")
            await shots.take(page, "watch-desktop")
            assert await page.evaluate(NO_SIDEWAYS_SCROLL)

            # A page opened later lists it from `events`, snapshot and all.
            # reload() only starts a navigation: the old document answers until it is replaced, so it is
            # marked, and the wait is for a complete document without the mark (under load the old page
            # could take the connect click and then vanish).
            await page.evaluate("window.__before_reload = true; location.reload()")
            await page.wait_for(
                "!window.__before_reload && document.readyState === 'complete' && typeof $ === 'function'",
                15,
                "the reloaded page",
            )
            await page.viewport(420, 800)
            await connect(page)
            await page.wait_for(f"{entry} && {entry}.querySelector('img').naturalWidth > 0", 15, "the listed alert")
            assert await page.evaluate(f"Number({entry}.dataset.event)") == event["id"]
            await page.wait_for(f"{row} !== null", 10, "the watch listed again")
            await page.evaluate(f"{entry}.scrollIntoView()")
            await shots.take(page, "watch-narrow")
            assert await page.evaluate(NO_SIDEWAYS_SCROLL)
            assert await page.evaluate(CONTROL_PROBLEMS) == []

            # Remove it from the page.
            await page.click(f"{row}.querySelector('button')")
            await until_async(lambda: watches_message(srv), lambda ws: ws == [], 15, "the watch removed")
            await page.wait_for(f"{row} === null", 10, "the watch gone from the page")
    finally:
        await asyncio.to_thread(store.close)


async def until_async(read: Any, pred: Any, timeout: float, what: str) -> None:
    """Poll the coroutine ``read()`` until ``pred`` holds for its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred(await read()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)
