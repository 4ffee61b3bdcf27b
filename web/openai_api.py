"""OpenAI's chat completions API as livesight speaks it: the requests it takes and every shape it answers
with (completions, chunks, models, errors). The endpoint itself is :mod:`web.openai_http`.

A model is a stream: ``livesight/<stream>`` (a bare ``<stream>`` is taken too). The last message is the
question (a user message); the user and assistant messages before it become the conversation's earlier
turns, the newest :data:`~engine.sessions.MAX_TURNS` kept. System and developer messages are accepted and
not shown to the model (livesight's own prompt frames the video). Sampling parameters are accepted and
ignored: answers are greedy. What livesight cannot do (several choices, tools, log probabilities, JSON
modes, audio, images in messages, stop sequences) is refused with 400 and the parameter named; any other
unknown field is refused too, as OpenAI does.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from http import HTTPStatus
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from engine.events import AnswerContext, Timing
from engine.sessions import MAX_TURN_CHARS, MAX_TURNS
from errors import Kind, LivesightError
from models.adapter import Turn
from web.protocol import MAX_NEW_TOKENS, MAX_QUESTION_CHARS, error_code

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
MODEL_PREFIX = "livesight/"
#: ``max_tokens`` when a request gives none (the websocket ``ask``'s default); larger ones are capped at
#: :data:`~web.protocol.MAX_NEW_TOKENS`
DEFAULT_MAX_TOKENS = 128
#: Accepted and ignored: sampling (answers are greedy), bookkeeping, and options that mean nothing here.
IGNORED = frozenset(
    {
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "user",
        "metadata",
        "store",
        "logit_bias",
        "top_logprobs",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "reasoning_effort",
        "verbosity",
        "parallel_tool_calls",
        "prediction",
    }
)

Wire = dict[str, Any]


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> Wire:
        return {
            "error": {"message": self.message, "type": error_type(self.status), "param": self.param, "code": self.code}
        }


def error_type(status: HTTPStatus) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == HTTPStatus.UNAUTHORIZED:
        return "authentication_error"
    if status == HTTPStatus.FORBIDDEN:
        return "permission_error"
    if status == HTTPStatus.NOT_FOUND:
        return "not_found_error"
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, "bad_request", param=param)


#: HTTP status per kind of error; the code is the websocket API's (web/protocol.py).
_STATUS: dict[Kind, HTTPStatus] = {
    Kind.INVALID: HTTPStatus.BAD_REQUEST,
    Kind.CONFLICT: HTTPStatus.BAD_REQUEST,
    Kind.TOO_LARGE: HTTPStatus.BAD_REQUEST,
    Kind.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Kind.BUSY: HTTPStatus.TOO_MANY_REQUESTS,
    Kind.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    Kind.FORBIDDEN: HTTPStatus.FORBIDDEN,
    Kind.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


def api_error(exc: LivesightError) -> ApiError:
    """An engine or auth error as an HTTP status and OpenAI's shape; retryable ones say when to retry."""
    status = _STATUS.get(exc.kind, HTTPStatus.INTERNAL_SERVER_ERROR)
    headers = [("Retry-After", "1" if exc.kind is Kind.BUSY or status == 503 else "5")] if exc.retryable else []
    if status == HTTPStatus.UNAUTHORIZED:
        headers.append(("WWW-Authenticate", 'Bearer realm="livesight"'))
    return ApiError(status, exc.message, error_code(exc), headers=headers)


# --- requests ---------------------------------------------------------------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TextPart(_Open):
    type: Literal["text"]
    text: StrictStr


class OtherPart(_Open):
    """Images, audio, files: refused (livesight answers about its own video)."""

    type: StrictStr


Content = StrictStr | list[Annotated[TextPart | OtherPart, Field(union_mode="left_to_right")]]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Content | None = None
    tool_calls: list[Any] | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class ChatRequest(_Open):
    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None
    audio: Any = None
    web_search_options: Any = None

    @property
    def stream_name(self) -> str:
        return self.model.removeprefix(MODEL_PREFIX)

    @property
    def answer_tokens(self) -> int:
        """The answer's token limit: ``max_completion_tokens`` or ``max_tokens``, capped at the server's."""
        asked = self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS
        return min(asked, MAX_NEW_TOKENS)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_chat(body: bytes) -> ChatRequest:
    """Validate a chat completions request; :class:`ApiError` (400) naming the first problem."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("the body is not JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field(first["loc"])
        raise bad_request(f"{where or 'body'}: {first['msg']}", where or None) from None
    unknown = sorted(set(req.model_extra or {}) - IGNORED)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0])
    _refuse_unsupported(req)
    return req


def _field(loc: tuple[int | str, ...]) -> str:
    """Where a validation error is, as ``messages.0.content``: the path up to pydantic's union tags."""
    path: list[str] = []
    for part in loc:
        if isinstance(part, str) and (part in _TAGS or not part.isidentifier() or part[0].isupper()):
            break
        path.append(str(part))
    return ".".join(path)


_TAGS = frozenset({"str", "int", "bool", "float", "dict", "list"})


def _refuse_unsupported(req: ChatRequest) -> None:
    if req.n not in (None, 1):
        raise bad_request("livesight gives one choice per request: n must be 1", "n")
    if req.tools or req.functions or req.tool_choice not in (None, "none") or req.function_call not in (None, "none"):
        raise bad_request("tools and function calling are not supported", "tools")
    if req.logprobs:
        raise bad_request("log probabilities are not supported", "logprobs")
    if req.response_format is not None and req.response_format.get("type") != "text":
        raise bad_request("only text answers are supported (response_format type 'text')", "response_format")
    if req.audio is not None or (req.modalities is not None and set(req.modalities) != {"text"}):
        raise bad_request("only text answers are supported", "modalities")
    if req.web_search_options is not None:
        raise bad_request("web search is not supported", "web_search_options")
    if req.stop:
        raise bad_request("stop sequences are not supported", "stop")


def conversation(messages: list[ChatMessage]) -> tuple[str, tuple[Turn, ...]]:
    """The question (the last message, a user's) and the earlier turns: each assistant message with the
    user messages before it (joined), the newest :data:`MAX_TURNS`, cut to :data:`MAX_TURN_CHARS`."""
    turns: list[Turn] = []
    asked: list[str] = []
    for i, msg in enumerate(messages):
        if msg.role in ("tool", "function") or msg.tool_calls:
            raise bad_request("tool messages are not supported", f"messages.{i}")
        if msg.role in ("system", "developer"):
            continue
        text = _text(msg.content, i)
        if msg.role == "user":
            asked.append(text)
        elif asked:  # an assistant answer with no question before it (a greeting) is not a turn
            turns.append(Turn("\n".join(asked)[:MAX_TURN_CHARS], text[:MAX_TURN_CHARS]))
            asked = []
    if messages[-1].role != "user" or not asked:
        raise bad_request("the last message must be the user's question", "messages")
    question = "\n".join(asked).strip()
    if not question:
        raise bad_request("the question is empty", "messages")
    if len(question) > MAX_QUESTION_CHARS:
        raise bad_request(f"the question is over {MAX_QUESTION_CHARS} characters", "messages")
    return question, tuple(turns[-MAX_TURNS:])


def _text(content: str | list[TextPart | OtherPart] | None, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if not isinstance(part, TextPart):
            raise bad_request(
                f"content of type {part.type!r} is not supported: livesight answers about its streams' video",
                f"messages.{i}.content",
            )
        parts.append(part.text)
    return "\n".join(parts)


# --- responses --------------------------------------------------------------------------------------------
def usage(prompt: int, completion: int) -> Wire:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extra(stream: str, context: AnswerContext, timing: Timing) -> Wire:
    """The ``livesight`` field: the stream, the context the answer used, and its timing (as the websocket
    ``answer`` has them)."""
    return {"stream": stream, "context": asdict(context), "timing": asdict(timing)}


def completion(cid: str, created: int, model: str, text: str, finish: str, counts: Wire, livesight: Wire) -> Wire:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        ],
        "usage": counts,
        "livesight": livesight,
    }


def chunk(
    cid: str,
    created: int,
    model: str,
    delta: Wire | None,
    *,
    finish: str | None = None,
    counts: Wire | None = None,
    livesight: Wire | None = None,
) -> Wire:
    """One ``chat.completion.chunk``; ``delta`` None makes the usage chunk (no choices)."""
    out: Wire = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    out["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    if counts is not None:
        out["usage"] = counts
    if livesight is not None:
        out["livesight"] = livesight
    return out


def event(data: Wire | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (``[DONE]`` as it is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def model(stream: str, created: int, state: str) -> Wire:
    return {
        "id": MODEL_PREFIX + stream,
        "object": "model",
        "created": created,
        "owned_by": "livesight",
        "livesight": {"stream": stream, "state": state},
    }


def models(entries: list[Wire]) -> Wire:
    return {"object": "list", "data": entries}
