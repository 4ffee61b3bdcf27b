"""The page's behaviour in a real headless Chromium against a real server: layout under long answers and
a narrow window, dropped connections and server restarts, the token field, labels, and error messages.
Each test keeps screenshots of the states it checks (see the ``shots`` fixture)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from tests.support.page import (
    CONTROL_PROBLEMS,
    NO_SIDEWAYS_SCROLL,
    ScriptedModel,
    Shots,
    ask,
    connect,
    js,
    open_page,
    submit,
)
from tests.support.server import TOKEN, running_server, wait_for_frames

SETTINGS = EngineSettings(fps=2.0)
CONNECTED = "$('status').textContent === 'connected'"
LONG = "x" * 3000  # one word wider than any screen


async def test_a_long_unbroken_answer_wraps_inside_the_answer_area(
    tiny: SmolVLMAdapter, scripted: ScriptedModel, tmp_path: Path, shots: Shots
) -> None:
    scripted.text, scripted.pieces = LONG, 30
    async with (
        running_server(tiny, SETTINGS, ("demo",)) as srv,
        open_page(srv.port, tmp_path / "profile", 1280, 800) as page,
    ):
        await wait_for_frames(srv.engine, "demo", 1)
        await connect(page)
        assert await ask(page, "Spell it out") == LONG
        await shots.take(page, "long-answer")
        assert await page.evaluate(NO_SIDEWAYS_SCROLL)
        # Wrapped inside the answer area: the answer is no wider than the log, the log inside the window.
        assert await page.evaluate("$('answer-p1').scrollWidth <= $('log').clientWidth")
        assert await page.evaluate("$('log').getBoundingClientRect().right <= innerWidth")


async def test_a_connection_the_server_drops_interrupts_the_question_and_ask_works_after_reconnecting(
    tiny: SmolVLMAdapter, scripted: ScriptedModel, tmp_path: Path, shots: Shots
) -> None:
    async with (
        running_server(tiny, SETTINGS, ("demo",)) as srv,
        open_page(srv.port, tmp_path / "profile") as page,
    ):
        await wait_for_frames(srv.engine, "demo", 1)
        await connect(page)
        qid = await submit(page, f"Take your time {ScriptedModel.HOLD}")
        await page.wait_for(f"$('answer-{qid}').dataset.tokens === '1'", 30, "the first piece of the answer")
        # The server drops the page's connection mid-answer, as it drops a client too slow to read.
        for client in list(srv.app._clients):
            await client.ws.close(1013, "client too slow")
        await page.wait_for(f"$('answer-{qid}').dataset.state === 'interrupted'", 10, "the question interrupted")
        assert "interrupted" in await page.evaluate(f"$('note-{qid}').textContent")
        await shots.take(page, "interrupted")
        # The page reconnects by itself; Ask works again, and the unanswered question is ready to resend.
        await page.wait_for(CONNECTED, 20, "the page to reconnect")
        assert await page.evaluate("$('question').value") == f"Take your time {ScriptedModel.HOLD}"
        assert not await page.evaluate("$('send').disabled")
        await shots.take(page, "reconnected")
        assert await ask(page, "Still there?") == scripted.text
        await shots.take(page, "answered-after-reconnect")


async def test_after_a_server_restart_the_page_reconnects_and_answers(
    tiny: SmolVLMAdapter, scripted: ScriptedModel, tmp_path: Path, shots: Shots
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        async with running_server(tiny, SETTINGS, ("demo",)) as srv:
            port = srv.port
            page = await stack.enter_async_context(open_page(port, tmp_path / "profile"))
            await wait_for_frames(srv.engine, "demo", 1)
            await connect(page)
            qid = await submit(page, f"Take your time {ScriptedModel.HOLD}")
            await page.wait_for(f"$('answer-{qid}').dataset.tokens === '1'", 30, "the first piece of the answer")
        # The server is gone: the question can no longer be answered, and the page says so.
        await page.wait_for(
            f"['interrupted', 'failed'].includes($('answer-{qid}').dataset.state)", 15, "the question ended"
        )
        await page.wait_for("$('status').textContent.includes('reconnecting')", 10, "reconnecting")
        assert await page.evaluate("$('send').disabled")  # no Ask that silently does nothing
        await shots.take(page, "server-gone")
        async with running_server(tiny, SETTINGS, ("demo",), port=port) as srv:
            await wait_for_frames(srv.engine, "demo", 1)
            await page.wait_for(CONNECTED, 30, "the page to reconnect to the restarted server")
            assert await ask(page, "Are you back?") == scripted.text
            await shots.take(page, "answered-after-restart")


async def test_enter_in_the_token_field_connects(tiny: SmolVLMAdapter, tmp_path: Path, shots: Shots) -> None:
    async with running_server(tiny, SETTINGS, ()) as srv, open_page(srv.port, tmp_path / "profile") as page:
        await page.click("$('token')")
        await page.type_text(TOKEN)
        await page.press_enter()
        await page.wait_for(CONNECTED, 15, "Enter in the token field to connect")
        await shots.take(page, "connected-by-enter")


async def test_a_wrong_token_error_is_cleared_by_a_successful_connect(
    tiny: SmolVLMAdapter, tmp_path: Path, shots: Shots
) -> None:
    async with running_server(tiny, SETTINGS, ()) as srv, open_page(srv.port, tmp_path / "profile") as page:
        await page.evaluate("$('token').value = 'not-the-token'; $('connect').click()")
        await page.wait_for("document.body.innerText.includes('wrong token')", 15, "the refusal on the page")
        await shots.take(page, "wrong-token")
        await connect(page)
        assert "wrong token" not in await page.evaluate("document.body.innerText")
        await shots.take(page, "connected")
        # A refused token is not retried behind the user's back: one failure counted, not a stream of them.
        assert srv.app.auth.limiter.total == 1


async def test_every_button_has_its_own_clear_label(
    tiny: SmolVLMAdapter, scripted: ScriptedModel, tmp_path: Path, shots: Shots
) -> None:
    async with (
        running_server(tiny, SETTINGS, ("demo",)) as srv,
        open_page(srv.port, tmp_path / "profile") as page,
    ):
        labels = await page.evaluate(
            "[...document.querySelectorAll('button')]"
            ".map((b) => (b.getAttribute('aria-label') || b.textContent).trim())"
        )
        assert len(labels) == len(set(labels)), labels
        assert "Stop" not in labels
        assert "publish" in (await page.evaluate("$('unpublish').textContent")).lower()
        assert "answer" in (await page.evaluate("$('cancel').textContent")).lower()
        # And "Stop answer" stops the answer.
        await wait_for_frames(srv.engine, "demo", 1)
        await connect(page)
        qid = await submit(page, f"Take your time {ScriptedModel.HOLD}")
        await page.wait_for(f"$('answer-{qid}').dataset.tokens === '1'", 30, "the first piece of the answer")
        await shots.take(page, "answering")
        await page.click("$('cancel')")
        await page.wait_for(f"$('answer-{qid}').dataset.state === 'stopped'", 10, "the answer stopped")
        await shots.take(page, "stopped")


async def test_the_page_is_usable_420_px_wide(
    tiny: SmolVLMAdapter, scripted: ScriptedModel, tmp_path: Path, shots: Shots
) -> None:
    scripted.text, scripted.pieces = LONG, 30
    async with (
        running_server(tiny, SETTINGS, ("demo",)) as srv,
        open_page(srv.port, tmp_path / "profile", 420, 800) as page,
    ):
        await wait_for_frames(srv.engine, "demo", 1)
        assert await page.evaluate(NO_SIDEWAYS_SCROLL)
        assert await page.evaluate(CONTROL_PROBLEMS) == []
        await shots.take(page, "narrow")
        # Used as a person would: real clicks and typing.
        await page.click("$('token')")
        await page.type_text(TOKEN)
        await page.click("$('connect')")
        await page.wait_for(CONNECTED, 15, "the websocket")
        await page.click("$('question')")
        await page.type_text("What is there?")
        await page.click("$('send')")
        await page.wait_for("$('answer-p1') && $('answer-p1').dataset.done === '1'", 60, "the answer")
        await shots.take(page, "narrow-answered")
        assert await page.evaluate(NO_SIDEWAYS_SCROLL)
        assert await page.evaluate("$('answer-p1').scrollWidth <= $('log').clientWidth")
        assert await page.evaluate(CONTROL_PROBLEMS) == []


async def test_error_codes_read_plainly(tiny: SmolVLMAdapter, tmp_path: Path, shots: Shots) -> None:
    with socket.socket() as s:  # a camera address where nothing listens: never a frame
        s.bind(("127.0.0.1", 0))
        dead = f"rtsp://127.0.0.1:{s.getsockname()[1]}/cam"
    async with (
        running_server(tiny, SETTINGS, (f"cam={dead}",)) as srv,
        open_page(srv.port, tmp_path / "profile") as page,
    ):
        await connect(page)
        qid = await submit(page, "Anyone there?")
        await page.wait_for("$('log').textContent.includes('no video yet, try again in a moment')", 15, "the refusal")
        assert await page.evaluate(f"$('answer-{qid}').dataset.state") == "failed"
        assert await page.evaluate(f"$('note-{qid}').textContent") == "no video yet, try again in a moment"
        assert await page.evaluate("$('question').value") == "Anyone there?"  # ready to ask again
        assert not await page.evaluate("$('send').disabled")
        await shots.take(page, "no-video")
        # The other new codes, worded as the server words them, through the page's one message handler
        # (a page user cannot provoke them on demand: a full queue, a viewer's admin request, a shutdown).
        for code, message, shown in [
            ("busy", "16 questions are waiting; ask again in a moment", "the server is busy, try again in a moment"),
            (
                "forbidden",
                "only the admin token may add streams",
                "not allowed with this token: only the admin token may add streams",
            ),
            (
                "unavailable",
                "the server is shutting down; ask again when it is back",
                "not available right now: the server is shutting down; ask again when it is back",
            ),
        ]:
            error = {"type": "error", "id": None, "code": code, "message": message, "retryable": code != "forbidden"}
            await page.evaluate(f"handle({js(error)})")
            assert await page.evaluate("$('log').lastElementChild.textContent") == shown
        await shots.take(page, "errors")
