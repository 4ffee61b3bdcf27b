"""The page at ``/`` in a real headless Chromium with a fake webcam: it publishes over WHIP, shows the
stream's status and memory, and a question asked through the page gets its answer streamed onto it."""

from __future__ import annotations

from pathlib import Path

import pytest

import stream.webrtc
from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from stream.webrtc import WebRTCSource
from tests.support.chromium import Chromium
from tests.support.page import Shots, js
from tests.support.server import TOKEN, info, running_server, until
from tests.support.webrtc_peer import loopback_ice


async def test_page_publishes_the_webcam_and_streams_an_answer(
    tiny: SmolVLMAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shots: Shots
) -> None:
    loopback_ice(monkeypatch)
    monkeypatch.setattr(stream.webrtc, "STALL_S", 2.0)
    async with (
        running_server(tiny, EngineSettings(fps=2.0), ()) as srv,
        Chromium(f"http://127.0.0.1:{srv.port}/", tmp_path / "profile") as page,
    ):
        await page.wait_for(
            f"location.port === '{srv.port}' && document.readyState === 'complete' && typeof $ === 'function'",
            30,
            "the page",
        )
        await page.evaluate(f"$('token').value = {js(TOKEN)}; $('connect').click()")
        await page.wait_for("$('status').textContent === 'connected'", 10, "the websocket")

        await page.evaluate("$('name').value = 'browser'; $('camera').click()")
        await page.wait_for("!$('publish').disabled", 10, "the camera")
        await page.evaluate("$('publish').click()")
        await until(lambda: srv.engine.source("browser") is not None, 15, "the WHIP publish")
        await until(lambda: getattr(info(srv.engine, "browser"), "memory_frames", 0) >= 2, 30, "frames")
        # The page follows the stream it published: status pushed, memory from `streams`.
        await page.wait_for("$('stream').value === 'browser' && $('state').textContent === 'live'", 10, "live")
        await page.wait_for("/memory [1-9]/.test($('memory').textContent)", 10, "memory on the page")
        await shots.take(page, "publishing")
        first = srv.engine.source("browser")
        assert isinstance(first, WebRTCSource)

        await page.evaluate("$('question').value = 'What do you see?'; $('ask').requestSubmit()")
        done = "$('answer-p1') && $('answer-p1').dataset.done === '1'"
        await page.wait_for(done, 60, "the answer on the page")
        tokens = int(await page.evaluate("$('answer-p1').dataset.tokens || '0'"))
        text = await page.evaluate("$('answer-p1').textContent")
        meta = await page.evaluate("$('meta-p1').textContent")
        assert tokens >= 1  # streamed token by token before the final answer
        assert int(meta.split(" frames")[0]) >= 2  # answered from the webcam's frames in memory
        # A follow-up in the same conversation.
        await page.evaluate("$('question').value = 'And now?'; $('ask').requestSubmit()")
        await page.wait_for("$('answer-p2') && $('answer-p2').dataset.done === '1'", 60, "the second answer")
        await shots.take(page, "answered")
        # The page logs what it showed; Chromium writes console lines to its stderr.
        assert text
        assert any(f'"livesight answer: {text}"' in line for line in page.stderr)
        assert any('"livesight status: browser live"' in line for line in page.stderr)

        # Stop on the page: WHIP DELETE, the stream is removed.
        await page.evaluate("$('unpublish').click()")
        await until(lambda: srv.engine.source("browser") is None, 10, "the stream's removal")
        await until(lambda: first._pc.connectionState == "closed", 5, "the peer connection to close")

        # Publish again, then the browser vanishes (killed): the stream ends within seconds.
        await page.evaluate("$('publish').click()")
        await until(lambda: getattr(info(srv.engine, "browser"), "state", None) == "live", 15, "live again")
        again = srv.engine.source("browser")
        assert isinstance(again, WebRTCSource)
        await page.kill()
        await until(lambda: again.stats.state.value == "ended", 10, "the end of the vanished publisher")
        await until(lambda: again._pc.connectionState == "closed", 5, "the peer connection to close")
