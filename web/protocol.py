"""The websocket protocol's client messages: parsed and validated once, at the edge.

Every message is a JSON object with a ``type``. Unknown types, unknown or missing fields and ill-typed
values are ``bad_request``; a message over :data:`MAX_MESSAGE_BYTES` is ``too_large``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from livesight.errors import BadRequest, TooLarge

#: Largest client message the protocol accepts (bytes of UTF-8). Larger ones get ``too_large``; the
#: connection stays open. Messages over :data:`HARD_LIMIT_BYTES` close the connection (code 1009).
MAX_MESSAGE_BYTES = 16 * 1024
HARD_LIMIT_BYTES = 1024 * 1024
MAX_QUESTION_CHARS = 4000
MAX_NEW_TOKENS = 1024

Id = Annotated[StrictStr, Field(min_length=1, max_length=64)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Auth(_Msg):
    type: Literal["auth"]
    token: Annotated[StrictStr, Field(max_length=512)]


class Ask(_Msg):
    type: Literal["ask"]
    id: Id
    stream: Name
    question: Annotated[StrictStr, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_NEW_TOKENS)] = 128
    session: Id | None = None
    #: answer with a fresh prefill that drops visual tokens inside the model, chosen uniformly or by the
    #: question's attention (slower: the cached prefix is not used); omitted: on the cached prefix
    guided: Literal["uniform", "attention"] | None = None


class Cancel(_Msg):
    type: Literal["cancel"]
    id: Id


class Streams(_Msg):
    type: Literal["streams"]


class AddStream(_Msg):
    """Start ingesting ``url`` (anything ``livesight serve --source`` takes) as stream ``name``."""

    type: Literal["add_stream"]
    name: Name
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    id: Id | None = None


class RemoveStream(_Msg):
    type: Literal["remove_stream"]
    name: Name
    id: Id | None = None


class Subscribe(_Msg):
    """Receive a ``status`` message now and on every state change of ``stream``."""

    type: Literal["subscribe"]
    stream: Name


class Unsubscribe(_Msg):
    type: Literal["unsubscribe"]
    stream: Name


Message = Auth | Ask | Cancel | Streams | AddStream | RemoveStream | Subscribe | Unsubscribe
Request = Annotated[Message, Field(discriminator="type")]
_ADAPTER: TypeAdapter[Message] = TypeAdapter(Request)


class ProtocolError(Exception):
    """A bad client message: the typed error, and the message's ``id`` when one could be read."""

    def __init__(self, error: BadRequest | TooLarge, msg_id: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.msg_id = msg_id


def parse(raw: str | bytes) -> Message:
    """Validate one websocket message; raises :class:`ProtocolError`."""
    if isinstance(raw, bytes):
        raise ProtocolError(BadRequest("binary messages are not part of the protocol; send JSON text"), None)
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(TooLarge(f"message of {size} bytes; the limit is {MAX_MESSAGE_BYTES}"), None)
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(BadRequest(f"not JSON: {exc}"), None) from None
    except RecursionError:
        raise ProtocolError(BadRequest("JSON nested too deeply"), None) from None
    if not isinstance(data, dict):
        raise ProtocolError(BadRequest("a message must be a JSON object with a 'type'"), None)
    msg_id = data.get("id") if isinstance(data.get("id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BadRequest("missing 'type'"), msg_id)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(BadRequest(_describe(exc, kind)), msg_id) from None


def _describe(exc: ValidationError, kind: str) -> str:
    first = exc.errors()[0]
    if first["type"] == "union_tag_invalid":
        return (
            f"unknown message type {kind!r}; known: auth, ask, cancel, streams, "
            "add_stream, remove_stream, subscribe, unsubscribe"
        )
    where = ".".join(str(p) for p in first["loc"][1:]) or "message"
    return f"{kind}: field {where!r}: {first['msg']}"
