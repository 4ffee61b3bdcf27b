"""Typed errors shared by every layer: the bottom floor, importing nothing of the project.

Each error says what kind of failure it is (:class:`Kind`) and whether retrying the same request later
can help (``retryable``), so callers never parse messages to decide. Wire codes and HTTP statuses are not
known here: ``web/`` maps errors to them in one place (:mod:`web.protocol`).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Kind(enum.Enum):
    """What went wrong, from the caller's point of view."""

    INVALID = "invalid"  # the request or configuration is wrong: fix it, do not retry as is
    NOT_FOUND = "not_found"  # it names something that does not exist
    CONFLICT = "conflict"  # it collides with something that exists (a name in use)
    TOO_LARGE = "too_large"  # it exceeds a size limit
    BUSY = "busy"  # a bounded resource is full: the same request can succeed a moment later
    UNAUTHORIZED = "unauthorized"  # no or wrong credentials
    FORBIDDEN = "forbidden"  # the credentials are good but do not allow this
    UNAVAILABLE = "unavailable"  # something it depends on (model files, a camera) cannot be reached
    INTERNAL = "internal"  # a bug or an unexpected failure; see the server log


class LivesightError(Exception):
    """Base of every error livesight raises on purpose.

    Errors pickle with their message, ``retryable`` and any other attribute (an exception's ``__dict__``
    travels with it), so they cross process boundaries as themselves (``serve --ray``: shard to gateway)."""

    kind: ClassVar[Kind] = Kind.INTERNAL
    default_retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable


class BadRequest(LivesightError):
    kind = Kind.INVALID


class Conflict(BadRequest):
    """A name already in use (a stream, a question id)."""

    kind = Kind.CONFLICT


class UnknownStream(LivesightError):
    kind = Kind.NOT_FOUND


class UnknownWatch(LivesightError):
    """A watch id that does not exist (or one on a stream this client may not see)."""

    kind = Kind.NOT_FOUND


class TooManyWatches(LivesightError):
    """A stream (or the server) already has as many watches as it may: remove one first."""

    kind = Kind.CONFLICT


class Unauthorized(LivesightError):
    kind = Kind.UNAUTHORIZED


class Forbidden(LivesightError):
    """An authenticated client asked for something its role does not allow (a viewer adding a stream)."""

    kind = Kind.FORBIDDEN


class NoVideo(LivesightError):
    """A question about a stream that has no frame in memory yet: ask again once it is live."""

    kind = Kind.UNAVAILABLE
    default_retryable = True


class ShuttingDown(LivesightError):
    """The server is stopping; the same request can succeed against it (or another) once it is back."""

    kind = Kind.UNAVAILABLE
    default_retryable = True


class ShardUnavailable(LivesightError):
    """The part of a distributed server that holds a stream (a shard, ``serve --ray``) stopped or is
    restarting: what it was doing is lost, and the same request succeeds once the stream is back (seconds)."""

    kind = Kind.UNAVAILABLE
    default_retryable = True


class TooLarge(LivesightError):
    kind = Kind.TOO_LARGE


class Busy(LivesightError):
    """A bounded queue is full; the same request can succeed a moment later."""

    kind = Kind.BUSY
    default_retryable = True


class Internal(LivesightError):
    kind = Kind.INTERNAL


class ConfigError(LivesightError):
    """Invalid configuration, found once at startup (or in a request that configures). Fix it; retrying
    does not help."""

    kind = Kind.INVALID


class ModelUnavailable(LivesightError):
    """The model's files are neither cached nor reachable, or the model type is not supported."""

    kind = Kind.UNAVAILABLE


class SourceError(LivesightError):
    """A video source failed to open or to read.

    Retryable errors (network, a camera rebooting) are worth a reconnect; the others (a file that does not
    exist, a container with no video stream) are not.
    """

    kind = Kind.UNAVAILABLE
