"""A Python client for livesight's websocket API: typed calls, typed results, typed errors.

::

    from livesight.client import Client

    async with Client("ws://127.0.0.1:8765/v1/ws", token) as client:
        q = client.ask("demo", "What is moving?")
        async for piece in q:                      # the answer as it is generated
            print(piece, end="", flush=True)
        answer = await q                           # text, context (stream span, frames, tokens), timing
        for info in await client.streams():
            print(info.name, info.state, info.frames)
        async with await client.subscribe("demo") as statuses:
            async for status in statuses:          # survives reconnections
                print(status.stream, status.state)
        watch = await client.watch("demo", "the lights are off", every_s=2)   # admin token
        async with await client.follow("demo") as feed:  # statuses, watch changes, alerts
            async for msg in feed:
                if isinstance(msg, Alert):
                    print(msg.time, msg.condition, msg.snapshot)
        print(await client.events(stream="demo", since="1h", text="lights"))

:class:`SyncClient` offers the same calls, blocking, for scripts. Results are the server's own message
models (:mod:`web.server_messages`); errors are :class:`ClientError` values with ``code``, ``message`` and
``retryable``. Importing this package does not import torch or transformers.
"""

from livesight.client.client import Client, ConnectionListener
from livesight.client.errors import (
    BadRequestError,
    BusyError,
    ClientClosed,
    ClientError,
    ConnectionFailed,
    Disconnected,
    ForbiddenError,
    InternalError,
    InvalidReply,
    NoVideoError,
    QuestionCancelled,
    ServerError,
    TooLargeError,
    TooManyWatchesError,
    UnauthorizedError,
    UnavailableError,
    UnknownStreamError,
    UnknownWatchError,
)
from livesight.client.question import Question
from livesight.client.subscription import StreamPush, Subscription
from livesight.client.sync import SyncClient, SyncQuestion, SyncSubscription
from web.server_messages import (
    Alert,
    AlertUpdate,
    Answer,
    AnswerContext,
    Ready,
    Status,
    StreamAdded,
    StreamInfo,
    StreamRemoved,
    TierInfo,
    TimelineEvent,
    Timing,
    Token,
    Unwatched,
    WatchInfo,
    WatchStatus,
)

__all__ = [
    "Alert",
    "AlertUpdate",
    "Answer",
    "AnswerContext",
    "BadRequestError",
    "BusyError",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "ConnectionListener",
    "Disconnected",
    "ForbiddenError",
    "InternalError",
    "InvalidReply",
    "NoVideoError",
    "Question",
    "QuestionCancelled",
    "Ready",
    "ServerError",
    "Status",
    "StreamAdded",
    "StreamInfo",
    "StreamPush",
    "StreamRemoved",
    "Subscription",
    "SyncClient",
    "SyncQuestion",
    "SyncSubscription",
    "TierInfo",
    "TimelineEvent",
    "Timing",
    "Token",
    "TooLargeError",
    "TooManyWatchesError",
    "UnauthorizedError",
    "UnavailableError",
    "UnknownStreamError",
    "UnknownWatchError",
    "Unwatched",
    "WatchInfo",
    "WatchStatus",
]
