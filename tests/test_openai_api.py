"""The OpenAI-compatible endpoint with OpenAI's own Python client and with curl, against a real server
(the tiny real model, the demo source)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engine.engine import EngineSettings
from memory.segment import Segment
from models.adapter import Prefix, Turn
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import TOKEN, Server, running_server, until, wait_for_frames
from web.auth import Viewer

pytestmark = pytest.mark.server(sources=["demo"], fps=2.0)

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What do you see?"}]


def livesight(reply: Any) -> dict[str, Any]:
    """The ``livesight`` field of a completion or chunk (an extra field to the openai package)."""
    assert reply.model_extra is not None
    return dict(reply.model_extra["livesight"])


def api(port: int, key: str = TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
async def live(srv: Server) -> Server:
    """The server once the demo stream has video in memory."""
    await wait_for_frames(srv.engine, "demo", 1)
    return srv


async def test_a_whole_answer_with_its_usage_and_context(live: Server) -> None:
    async with api(live.port) as client:
        done = await client.chat.completions.create(model="livesight/demo", messages=QUESTION, max_tokens=6)
    assert done.id.startswith("chatcmpl-")
    assert done.object == "chat.completion"
    assert done.model == "livesight/demo"
    (choice,) = done.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    usage = done.usage
    assert usage is not None
    # Completion tokens are counted as generated: at most max_tokens, and exactly it when cut there.
    assert 0 <= usage.completion_tokens <= 6
    assert (choice.finish_reason == "length") == (usage.completion_tokens == 6)
    extra = livesight(done)
    ctx = extra["context"]
    assert extra["stream"] == "demo"
    assert ctx["frames"] >= 1 and ctx["start"] <= ctx["end"]
    assert ctx["completion_tokens"] == usage.completion_tokens
    # The prompt is the cached context plus the question on top.
    assert usage.prompt_tokens == ctx["prompt_tokens"] > ctx["tokens"] > ctx["visual_tokens"] > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert set(extra["timing"]) == {"queue_ms", "ttft_ms", "total_ms"}


async def test_a_streamed_answer_in_openai_chunks(live: Server) -> None:
    async with api(live.port) as client:
        stream = await client.chat.completions.create(
            model="livesight/demo",
            messages=QUESTION,
            max_completion_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.2,  # accepted, ignored: answers are greedy
            user="someone",
        )
        chunks = [c async for c in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    ctx = livesight(finishing[0])["context"]
    assert ctx["frames"] >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage  # include_usage: a last chunk with no choices carries the usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == ctx["completion_tokens"] <= 8
    assert (finishing[0].choices[0].finish_reason == "length") == (usage.completion_tokens == 8)
    assert text or usage.completion_tokens == 0


async def test_earlier_messages_become_the_conversations_turns(live: Server) -> None:
    """The user/assistant pairs before the question reach the model as turns (they add to the prompt)."""
    convo: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are terse."},  # accepted, not shown to the model
        {"role": "user", "content": "Is there a clock?"},
        {"role": "assistant", "content": "Yes, at the top."},
        {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]},
    ]
    async with api(live.port) as client:
        alone = await client.chat.completions.create(model="demo", messages=convo[-1:], max_tokens=1)
        after = await client.chat.completions.create(model="livesight/demo", messages=convo, max_tokens=1)
    assert alone.usage is not None and after.usage is not None

    def suffix(done: Any) -> int:
        assert done.usage is not None
        return int(done.usage.prompt_tokens - livesight(done)["context"]["tokens"])

    assert suffix(after) > suffix(alone) + 8


async def test_models_are_the_streams_the_key_may_see(tiny: SmolVLMAdapter) -> None:
    viewer = Viewer("v", "viewer-token-1", frozenset({"yard"}))
    async with running_server(tiny, EngineSettings(fps=2.0), ["demo", "yard=demo"], viewers=[viewer]) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        async with api(srv.port) as admin, api(srv.port, "viewer-token-1") as limited:
            assert sorted(m.id for m in (await admin.models.list()).data) == ["livesight/demo", "livesight/yard"]
            assert [m.id for m in (await limited.models.list()).data] == ["livesight/yard"]
            model = await admin.models.retrieve("livesight/demo")
            assert model.owned_by == "livesight"
            # A stream the viewer may not see is an unknown model, like one that does not exist.
            with pytest.raises(openai.NotFoundError):
                await limited.chat.completions.create(model="livesight/demo", messages=QUESTION)
            with pytest.raises(openai.NotFoundError):
                await limited.models.retrieve("livesight/demo")


async def test_errors_are_typed_with_openais_shape(live: Server) -> None:
    async with api(live.port) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="livesight/nope", messages=QUESTION)
        assert missing.value.body == {
            "message": "no model 'livesight/nope'",
            "type": "not_found_error",
            "param": "model",
            "code": "unknown_stream",
        }
        refused: list[tuple[dict[str, Any], str]] = [
            ({"n": 2}, "n"),
            ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
            ({"logprobs": True}, "logprobs"),
            ({"stop": ["\n"]}, "stop"),
            ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ]
        for options, param in refused:
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(model="livesight/demo", messages=QUESTION, **options)
            assert bad.value.status_code == 400 and bad.value.param == param, options
        unanswerable: list[list[ChatCompletionMessageParam]] = [
            [*QUESTION, {"role": "assistant", "content": "hi"}],  # the last message is not a question
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
            [{"role": "tool", "tool_call_id": "1", "content": "42"}, *QUESTION],
        ]
        for messages in unanswerable:
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="livesight/demo", messages=messages)
    async with api(live.port, "wrong-key") as stranger:
        with pytest.raises(openai.AuthenticationError) as denied:
            await stranger.models.list()
        assert denied.value.status_code == 401 and denied.value.code == "unauthorized"
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="livesight/demo", messages=QUESTION)


async def test_curl_sees_server_sent_events(live: Server) -> None:
    body = {"model": "livesight/demo", "messages": QUESTION, "max_tokens": 4, "stream": True}
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", "--max-time", "60", "-D", "-",
        "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
        "-d", json.dumps(body), f"http://127.0.0.1:{live.port}/v1/chat/completions",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    head, _, events = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])}
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["transfer-encoding"] == "chunked" and headers["connection"] == "close"
    # Every event is one "data:" line and a blank line; the last is [DONE].
    assert events.endswith("\n\n")
    frames = events[:-2].split("\n\n")
    assert all(f.startswith("data: ") and "\n" not in f for f in frames)
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["livesight"]["context"]["frames"] >= 1

    # Without a key: 401 in OpenAI's shape, and GET on the completions path is 405.
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-w", "\n%{http_code}", "-d", "{}", f"http://127.0.0.1:{live.port}/v1/chat/completions",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text, _, status = out.decode().rpartition("\n")
    assert status == "401"
    assert json.loads(text)["error"]["type"] == "authentication_error"


class EndlessAdapter(SmolVLMAdapter):
    """The tiny adapter answering with one piece every 20 ms until it is cancelled; records how it ended."""

    # Not SupportsSteps: the engine answers through generate() below, one piece per step, instead of
    # batched decoding (which tests/test_generation.py and tests/test_interleaving.py cover).
    decode = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: list[tuple[int, bool]] = []  # (pieces, cancelled) per answer

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        recalled: Sequence[Segment] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        n = 0
        try:
            while n < max_new_tokens and not cancel.is_set():
                time.sleep(0.02)
                n += 1
                yield "word "
        finally:  # the engine closes a cancelled answer's generator
            self.ended.append((n, cancel.is_set()))


@pytest.mark.parametrize("streamed", [True, False])
async def test_a_client_that_leaves_cancels_its_question(tiny: SmolVLMAdapter, streamed: bool) -> None:
    endless = EndlessAdapter(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)
    async with running_server(endless, EngineSettings(fps=2.0)) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        async with api(srv.port) as client:
            if streamed:
                stream = await client.chat.completions.create(
                    model="livesight/demo", messages=QUESTION, max_tokens=1024, stream=True
                )
                async for _ in stream:
                    break  # one chunk, then hang up
                await stream.close()
            else:  # the client gives up waiting and closes its connection
                with pytest.raises(openai.APITimeoutError):
                    await client.with_options(timeout=0.5).chat.completions.create(
                        model="livesight/demo", messages=QUESTION, max_tokens=1024
                    )
        # 1024 pieces would take 20 s; the question stops within one piece of the hang-up.
        await until(lambda: bool(endless.ended), 5, "the answer to stop")
        pieces, cancelled = endless.ended[0]
        assert cancelled and pieces < 300
        cancelled_total = srv.app.metrics.registry.get_sample_value(
            "livesight_questions_total", {"outcome": "cancelled", "code": ""}
        )
        assert cancelled_total == 1
