"""The OpenAI-compatible endpoint: ``POST /v1/chat/completions`` (through :mod:`web.plain_http`) and
``GET /v1/models`` (through websockets' ``process_request``). Shapes are in :mod:`web.openai_api`.

The API key is a livesight token, with its role: a viewer sees and asks about its own streams only (any
other is an unknown model, 404). A completion is one question to the engine, served in the same fair
queue as the websocket's (one owner per client address), and it holds one of the server's connection
slots while it runs. With ``stream: true`` the headers wait for the question's first event, so an error
before the answer starts (the queue full, the stream without video, shutting down) still gets its HTTP
status; after that, a failure arrives as an ``{"error": ...}`` event and the stream ends without
``[DONE]``. A client that leaves (either way) cancels its question.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

from engine.api import EngineAPI
from engine.engine import Question
from engine.events import Answered, Cancelled, Failed, QuestionEvent, Token
from errors import LivesightError, ShuttingDown, Unauthorized
from web import openai_api as api
from web.auth import Authenticator, Principal
from web.plain_http import ClientGone, HttpError, HttpRequest, HttpResponse
from web.slots import Slots

_JSON = ("Content-Type", "application/json")
Final = Answered | Cancelled | Failed


class Inbox:
    """A question's events as the endpoint reads them: the text not yet taken (pieces that pile up are
    taken together) and the final event. It holds at most one answer."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self.pieces = 0  # text pieces received in all
        self._final: Final | None = None
        self._ready = asyncio.Event()

    def __call__(self, ev: QuestionEvent) -> None:  # the question's reply (event loop)
        if isinstance(ev, Token):
            self._text.append(ev.text)
            self.pieces += 1
        else:
            self._final = ev
        self._ready.set()

    async def next(self, gone: asyncio.Future[None] | None) -> tuple[str, Final | None]:
        """The text since the last call, and the final event once it came; :class:`ClientGone` if the
        client leaves while nothing is there."""
        while not self._text and self._final is None:
            self._ready.clear()
            if gone is None:
                await self._ready.wait()
                continue
            ready = asyncio.ensure_future(self._ready.wait())
            waiting: list[asyncio.Future[Any]] = [ready, gone]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                ready.cancel()
                raise ClientGone
        text = "".join(self._text)
        self._text.clear()
        return text, self._final


class OpenAIEndpoint:
    def __init__(
        self,
        auth: Authenticator,
        engine: Callable[[], EngineAPI | None],
        slots: Slots,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._engine = engine
        self._slots = slots
        self._clock = clock
        self._started = int(clock())

    # --- GET /v1/models[/<id>] -------------------------------------------------------------------
    def models(self, path: str, authorization: str | None, address: str) -> HttpResponse:
        try:
            who = self._principal(authorization, address)
            engine = self._ready()
            infos = [s for s in engine.streams_info() if who.sees(s.name)]
            if path.rstrip("/") == api.MODELS_PATH:
                body = api.models([api.model(s.name, self._started, s.state) for s in infos])
                return _json(HTTPStatus.OK, body)
            wanted = path[len(api.MODELS_PATH) + 1 :].replace("%2F", "/").replace("%2f", "/")
            found = next((s for s in infos if api.MODEL_PREFIX + s.name == wanted), None)
            if found is None:
                raise api.ApiError(HTTPStatus.NOT_FOUND, f"no model {wanted!r}", "unknown_stream", param="model")
            return _json(HTTPStatus.OK, api.model(found.name, self._started, found.state))
        except api.ApiError as exc:
            return error_response(exc)

    # --- POST /v1/chat/completions ---------------------------------------------------------------
    async def chat(self, req: HttpRequest) -> HttpResponse:
        try:
            return await self._chat(req)
        except api.ApiError as exc:
            return error_response(exc)

    async def _chat(self, req: HttpRequest) -> HttpResponse:
        if req.method != "POST":
            raise api.ApiError(
                HTTPStatus.METHOD_NOT_ALLOWED, "ask with POST", "bad_request", headers=[("Allow", "POST")]
            )
        address = req.peer or "unknown"
        who = self._principal(req.headers.get("Authorization"), address)
        engine = self._ready()
        chat = api.parse_chat(req.body)
        name = chat.stream_name
        if not who.sees(name) or name not in engine.stream_names():
            raise api.ApiError(HTTPStatus.NOT_FOUND, f"no model {chat.model!r}", "unknown_stream", param="model")
        question, turns = api.conversation(chat.messages)
        refusal = self._slots.refusal(address)
        if refusal is not None:
            why, own = refusal
            status = HTTPStatus.TOO_MANY_REQUESTS if own else HTTPStatus.SERVICE_UNAVAILABLE
            raise api.ApiError(status, why, "busy", headers=[("Retry-After", "5")])
        release = self._slots.take(address)
        answer: Answer | None = None
        streaming = False
        try:
            inbox = Inbox()
            q = Question(
                id=f"chatcmpl-{secrets.token_hex(12)}",
                stream=name,
                text=question,
                max_new_tokens=chat.answer_tokens,
                session=None,
                reply=inbox,
                received=self._clock(),
                owner=("openai", address),
                group=address,
                turns=turns,
            )
            try:
                engine.submit(q)
            except LivesightError as exc:
                raise api.api_error(exc) from None
            answer = Answer(engine, q, inbox, chat, int(self._clock()), release)
            if not chat.stream:
                return _json(HTTPStatus.OK, await answer.whole(req.gone))
            await answer.start(req.gone)
            streaming = True  # plain_http closes it when the response ends
            return HttpResponse(HTTPStatus.OK, headers=_SSE, stream=answer)
        finally:
            if answer is None:
                release()
            elif not streaming:
                await answer.aclose()

    # --- both ------------------------------------------------------------------------------------
    def _principal(self, authorization: str | None, address: str) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                self._auth.refuse(address, "no bearer token")
                raise Unauthorized("send the token as the API key (Authorization: Bearer <token>)")
            return self._auth.authenticate(token.strip(), address)
        except Unauthorized as exc:
            raise api.api_error(exc) from None

    def _ready(self) -> EngineAPI:
        engine = self._engine()
        if engine is None:
            raise api.api_error(ShuttingDown("the server is starting; try again soon"))
        return engine


class Answer:
    """One completion's answer, read whole or streamed as server-sent events (a
    :class:`~web.plain_http.BodyStream`); closing it before its end cancels the question."""

    def __init__(
        self,
        engine: EngineAPI,
        q: Question,
        inbox: Inbox,
        chat: api.ChatRequest,
        created: int,
        release: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._q = q
        self._inbox = inbox
        self._chat = chat
        self._created = created
        self._release = release
        self._first: tuple[str, Final | None] = ("", None)
        self._events: AsyncGenerator[bytes, None] | None = None
        self._ended = False

    async def start(self, gone: asyncio.Future[None] | None) -> None:
        """Wait for the first event; :class:`~web.openai_api.ApiError` if the question failed before any
        text (its HTTP status still unsent)."""
        self._first = await self._inbox.next(gone)
        text, final = self._first
        if not text and final is not None:
            self._raise_unless_answered(final)

    async def whole(self, gone: asyncio.Future[None] | None) -> api.Wire:
        """The ``chat.completion``, once the answer is complete."""
        parts: list[str] = []
        final: Final | None = None
        while final is None:
            text, final = await self._inbox.next(gone)
            parts.append(text)
        answered = self._raise_unless_answered(final)
        return api.completion(self._q.id, self._created, self._chat.model, "".join(parts), *self._summary(answered))

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._events = self._sse()
        return self._events

    async def _sse(self) -> AsyncGenerator[bytes, None]:
        cid, created, model = self._q.id, self._created, self._chat.model
        yield api.event(api.chunk(cid, created, model, {"role": "assistant", "content": ""}))
        text, final = self._first
        while True:
            if text:
                yield api.event(api.chunk(cid, created, model, {"content": text}))
            if final is not None:
                break
            text, final = await self._inbox.next(None)  # a client that leaves closes this stream
        self._ended = True
        try:
            answered = self._raise_unless_answered(final)
        except api.ApiError as exc:
            yield api.event(exc.body())
            return
        finish, counts, livesight = self._summary(answered)
        yield api.event(api.chunk(cid, created, model, {}, finish=finish, livesight=livesight))
        if self._chat.include_usage:
            yield api.event(api.chunk(cid, created, model, None, counts=counts))
        yield api.event("[DONE]")

    async def aclose(self) -> None:
        if not self._ended:
            self._engine.cancel(self._q)  # a question that already ended is not touched
        if self._events is not None:
            await self._events.aclose()
        self._release()

    def _raise_unless_answered(self, final: Final) -> Answered:
        self._ended = True
        if isinstance(final, Answered):
            return final
        if isinstance(final, Failed):
            raise api.api_error(final.error)
        raise api.api_error(ShuttingDown("the question was cancelled"))

    def _summary(self, answered: Answered) -> tuple[str, api.Wire, api.Wire]:
        """finish_reason, usage and the ``livesight`` field of an answer."""
        ctx = answered.context
        completion = ctx.completion_tokens if ctx.completion_tokens is not None else self._inbox.pieces
        prompt = ctx.prompt_tokens if ctx.prompt_tokens is not None else ctx.tokens
        finish = "length" if completion >= self._q.max_new_tokens else "stop"
        livesight = api.extra(self._q.stream, ctx, answered.timing)
        return finish, api.usage(prompt, completion), livesight


_SSE = [("Content-Type", "text/event-stream; charset=utf-8"), ("X-Accel-Buffering", "no")]


def _json(status: HTTPStatus, body: api.Wire, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode(), [_JSON, *(headers or [])])


def error_response(exc: api.ApiError) -> HttpResponse:
    return _json(exc.status, exc.body(), exc.headers)


def shape_error(error: HttpError, target: str | None) -> HttpResponse | None:
    """A plain HTTP error (a body too large, a request too slow) in OpenAI's shape, for this API's paths;
    None for other paths."""
    path = (target or "").split("?", 1)[0]
    if not (path == api.CHAT_PATH or path.startswith(api.MODELS_PATH)):
        return None
    code = "too_large" if error.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE else "bad_request"
    return error_response(api.ApiError(error.status, error.message, code, headers=error.headers))
