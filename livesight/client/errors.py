"""The client's typed errors: one class per wire code, and the failures of the connection itself.

Every error carries ``code`` (the wire code, or the client's own for a connection failure), ``message``
and ``retryable`` (from the wire: whether the same request can succeed later). They are
:class:`errors.LivesightError` values, so ``livesight`` maps them to exit codes like any other error.
"""

from __future__ import annotations

from typing import ClassVar

from errors import Kind, LivesightError
from web.server_messages import Error


class ClientError(LivesightError):
    """Base of every error the client raises; ``code`` says which."""

    code: str = "client_error"

    def __init__(self, message: str, *, retryable: bool | None = None, code: str | None = None) -> None:
        super().__init__(message, retryable=retryable)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# --- what the server said ----------------------------------------------------------------------------
class ServerError(ClientError):
    """An ``error`` message from the server. A code this client does not know arrives as this class."""

    code = "server_error"
    codes: ClassVar[dict[str, type[ServerError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        ServerError.codes[cls.code] = cls

    @staticmethod
    def from_wire(msg: Error) -> ServerError:
        cls = ServerError.codes.get(msg.code, ServerError)
        return cls(msg.message, retryable=msg.retryable, code=msg.code)


class BadRequestError(ServerError):
    code = "bad_request"
    kind = Kind.INVALID


class UnknownStreamError(ServerError):
    """No such stream, or one this token may not see."""

    code = "unknown_stream"
    kind = Kind.NOT_FOUND


class UnknownWatchError(ServerError):
    """No such watch, or one on a stream this token may not see."""

    code = "unknown_watch"
    kind = Kind.NOT_FOUND


class TooManyWatchesError(ServerError):
    """The stream (or the server) has as many watches as it may: remove one first."""

    code = "too_many_watches"
    kind = Kind.CONFLICT


class NoVideoError(ServerError):
    """The stream has no frame in memory yet: ask again once it is live."""

    code = "no_video"
    kind = Kind.UNAVAILABLE
    default_retryable = True


class UnauthorizedError(ServerError):
    code = "unauthorized"
    kind = Kind.UNAUTHORIZED


class ForbiddenError(ServerError):
    """This token's role does not allow it (a viewer adding a stream)."""

    code = "forbidden"
    kind = Kind.FORBIDDEN


class TooLargeError(ServerError):
    code = "too_large"
    kind = Kind.TOO_LARGE


class BusyError(ServerError):
    """The server's queue is full; try again a moment later."""

    code = "busy"
    kind = Kind.BUSY
    default_retryable = True


class UnavailableError(ServerError):
    """The server is shutting down, or a camera or the model cannot be reached."""

    code = "unavailable"
    kind = Kind.UNAVAILABLE


class InternalError(ServerError):
    code = "internal"
    kind = Kind.INTERNAL


# --- what happened on this side ------------------------------------------------------------------------
class ConnectionFailed(ClientError):
    """The server could not be reached, or refused the websocket handshake."""

    code = "connection_failed"
    kind = Kind.UNAVAILABLE
    default_retryable = True


class Disconnected(ClientError):
    """The connection dropped (or is being re-established) while the request was under way."""

    code = "disconnected"
    kind = Kind.UNAVAILABLE
    default_retryable = True


class ClientClosed(ClientError):
    """The client was closed."""

    code = "closed"


class QuestionCancelled(ClientError):
    """The question was cancelled before its answer was complete."""

    code = "cancelled"


class InvalidReply(ClientError):
    """The server sent something that is not a valid protocol message."""

    code = "invalid_reply"
    kind = Kind.INTERNAL
