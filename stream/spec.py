"""Source specifications (``NAME=URL`` or ``URL``), their validation, and redaction of credentials."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A validated source: a stream name, its kind and its URL (which may hold credentials)."""

    name: str
    kind: str  # "demo" | "file" | "rtsp"
    url: str = field(repr=False)  # may hold credentials: see display_url
    fps: float | None = None  # this stream's sampling rate; None: the server-wide rate

    @property
    def display_url(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """The URL with user, password and secret-looking query values removed; safe for logs and status."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:  # a path (or C:\ on Windows)
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = [(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid stream name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def parse_source(text: str) -> SourceSpec:
    """Parse ``NAME=URL`` or ``URL``. URLs: ``demo``, a file path or ``file://`` URL, ``rtsp://`` or
    ``rtsps://`` (a camera; the default name is its host)."""
    name: str | None = None
    url = text.strip()
    head, sep, tail = url.partition("=")
    if sep and ":" not in head and "/" not in head and "\\" not in head:  # NAME=URL, not a path holding "="
        name, url = check_name(head.strip()), tail.strip()
    if not url:
        raise ConfigError(f"source {text!r} has no URL")
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if url == "demo":
        return SourceSpec(check_name(name or "demo"), "demo", "demo")
    if scheme in ("", "file"):
        path = urlsplit(url).path if scheme == "file" else url
        if not os.path.isfile(path):
            raise ConfigError(f"source {text!r}: no such file {path!r}")
        stem = os.path.splitext(os.path.basename(path))[0]
        default = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "file"
        return SourceSpec(check_name(name or default), "file", path)
    if scheme in ("rtsp", "rtsps"):
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (a property that validates the port)
        except ValueError:
            raise ConfigError(f"source {redact(url)!r}: invalid port") from None
        if not parts.hostname:
            raise ConfigError(f"source {redact(url)!r}: no host")
        default = re.sub(r"[^A-Za-z0-9_.-]", "_", parts.hostname)[:64]
        return SourceSpec(check_name(name or default), "rtsp", url)
    raise ConfigError(
        f"source {redact(url)!r}: unsupported scheme {scheme!r} (supported: demo, a file path, rtsp://, rtsps://)"
    )
