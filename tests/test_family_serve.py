"""``livesight serve --model tiny-random-<family>`` answers over the websocket, for every family."""

from __future__ import annotations

import asyncio
import socket

import pytest

from livesight.client import Answer, Client, ClientError
from livesight.config import load_serve_config
from livesight.serve import serve
from tests.families import FAMILIES

TOKEN = "test-token-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("name", FAMILIES)
async def test_serve_answers_over_the_websocket(name: str) -> None:
    port = _free_port()
    cfg = load_serve_config(
        {"model": name, "port": port, "token": TOKEN, "device": "cpu", "fps": 4.0, "lossless": True}
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cfg, stop=stop), name=f"serve:{name}")
    url = f"ws://127.0.0.1:{port}/v1/ws"
    answer: Answer | None = None
    try:
        # Until the model is loaded the server refuses websockets (503, retryable), and until the demo
        # stream's first frame is ingested the answer's context is empty: ask until it has frames.
        for _ in range(600):
            assert not server.done(), server.exception() if server.done() else None
            pieces: list[str] = []
            try:
                async with Client(url, TOKEN, reconnect=False) as client:
                    q = client.ask("demo", "What do you see?", max_new_tokens=6)
                    pieces = [piece async for piece in q]
                    answer = await q
            except ClientError as exc:
                if not exc.retryable:
                    raise
                await asyncio.sleep(0.05)
                continue
            if answer.context.frames >= 1:
                break
        assert answer is not None
        assert answer.context.frames >= 1
        assert answer.context.tokens > 0
        assert "".join(pieces) == answer.text  # the streamed tokens add up to the answer
        assert answer.timing.ttft_ms <= answer.timing.total_ms
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=30)
