"""``livesight ask``: a websocket client that prints the answer as it streams."""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any, TextIO

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from errors import LivesightError
from web.protocol import Ask, Auth, request


class AskFailed(LivesightError):
    """The server answered with an error, or could not be reached."""


async def ask(
    url: str,
    token: str,
    stream: str,
    question: str,
    *,
    session: str | None = None,
    max_new_tokens: int = 128,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    raw: bool = False,
) -> dict[str, Any]:
    """Ask one question; writes the answer to ``out`` as it streams and returns the ``answer`` message."""
    qid = f"q{next(_ids)}"
    try:
        async with connect(url, max_size=2**22, open_timeout=10) as ws:
            await ws.send(request(Auth(token=token)))
            ready = json.loads(await ws.recv())
            if ready.get("type") != "ready":
                raise AskFailed(f"{ready.get('code')}: {ready.get('message')}")
            await ws.send(
                request(Ask(id=qid, stream=stream, question=question, max_new_tokens=max_new_tokens, session=session))
            )
            async for text in ws:
                msg = json.loads(text)
                if raw:
                    out.write(json.dumps(msg) + "\n")
                    out.flush()
                if msg.get("type") == "token" and not raw:
                    out.write(msg["text"])
                    out.flush()
                elif msg.get("type") == "answer":
                    if not raw:
                        out.write("\n")
                        ctx, timing = msg["context"], msg["timing"]
                        err.write(
                            f"[context: {ctx['frames']} frames, {ctx['tokens']} tokens, stream time "
                            f"{_t(ctx['start'])}-{_t(ctx['end'])}; first token {timing['ttft_ms']:.0f} ms, "
                            f"total {timing['total_ms']:.0f} ms]\n"
                        )
                    return dict(msg)
                elif msg.get("type") == "error":
                    raise AskFailed(f"{msg['code']}: {msg['message']}", retryable=bool(msg.get("retryable")))
            raise AskFailed("the server closed the connection before answering", retryable=True)
    except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed, TimeoutError) as exc:
        raise AskFailed(f"cannot talk to {url}: {exc}", retryable=True) from exc


_ids = itertools.count(1)


def _t(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"
