"""Typed errors shared by every layer.

Each error carries a wire ``code`` (the websocket protocol's error codes) and says whether retrying the
same request later can help (``retryable``), so callers never parse messages to decide.
"""

from __future__ import annotations

from typing import ClassVar


class LivesightError(Exception):
    """Base of every error livesight raises on purpose."""

    code: ClassVar[str] = "internal"
    default_retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable


class BadRequest(LivesightError):
    code = "bad_request"


class UnknownStream(LivesightError):
    code = "unknown_stream"


class Unauthorized(LivesightError):
    code = "unauthorized"


class TooLarge(LivesightError):
    code = "too_large"


class Busy(LivesightError):
    """A bounded queue is full; the same request can succeed a moment later."""

    code = "busy"
    default_retryable = True


class Internal(LivesightError):
    code = "internal"


class ConfigError(LivesightError):
    """Invalid configuration, found once at startup. Fix the configuration; retrying does not help."""

    code = "bad_request"


class ModelUnavailable(LivesightError):
    """The model's files are neither cached nor reachable, or the model type is not supported."""


class SourceError(LivesightError):
    """A video source failed to open or to read.

    Retryable errors (network, a camera rebooting) are worth a reconnect; the others (a file that does not
    exist, a container with no video stream) are not.
    """
