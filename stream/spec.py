"""Source specifications (``NAME=URL`` or ``URL``), their validation, and redaction of credentials.

Camera URLs are read as FFmpeg reads them (:mod:`stream.url`); one whose meaning is ambiguous is refused,
and no error here quotes a camera URL. A camera's RTSP transport is not part of its URL (FFmpeg sends the
whole path and query to the camera): it is the spec's ``transport``, set from a streams file entry or
from ``--transport NAME=MODE`` (:func:`apply_transports`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import urlsplit

from errors import ConfigError
from stream.url import parse_camera_url, redact, scrub

__all__ = ["NAME_RE", "SourceSpec", "Transport", "apply_transports", "check_name", "parse_source", "redact", "scrub"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: How a camera's video travels: RTP interleaved on the RTSP TCP connection, RTP over UDP, or ``auto``
#: (TCP first, UDP when the camera refuses TCP; see :mod:`stream.rtsp`).
Transport = Literal["tcp", "udp", "auto"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A validated source: a stream name, its kind and its URL (which may hold credentials).

    ``guard``, when set (by :class:`stream.policy.SourcePolicy`), is called with the URL before every
    connection and returns the URL to open (its host pinned to an address just checked), or raises
    :class:`ConfigError` when the host is no longer allowed.
    """

    name: str
    kind: str  # "demo" | "file" | "rtsp" | "webrtc"
    url: str = field(repr=False)  # may hold credentials: see display_url
    fps: float | None = None  # this stream's sampling rate; None: the server-wide rate
    transport: Transport = "auto"  # cameras only
    guard: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

    @property
    def display_url(self) -> str:
        return redact(self.url)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid stream name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def check_transport(spec: SourceSpec, transport: str) -> SourceSpec:
    """``spec`` with its camera ``transport`` set; :class:`ConfigError` for a bad value or a non-camera."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"the transport is one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if spec.kind != "rtsp":
        raise ConfigError(f"only RTSP cameras have a transport, and {spec.name!r} is a {spec.kind} source")
    if transport == "udp" and spec.url[:6].lower() == "rtsps:":
        raise ConfigError("rtsps:// streams over TLS, which is TCP only: use tcp or auto")
    return dataclasses.replace(spec, transport=transport)  # type: ignore[arg-type]  # checked just above


def apply_transports(specs: Sequence[SourceSpec], settings: Sequence[str]) -> list[SourceSpec]:
    """``specs`` with the transports of ``--transport NAME=MODE`` settings applied (the last one per name
    wins); :class:`ConfigError` naming every setting that does not fit."""
    by_name = {s.name: i for i, s in enumerate(specs)}
    out = list(specs)
    problems: list[str] = []
    for setting in settings:
        name, sep, mode = setting.partition("=")
        name, mode = name.strip(), mode.strip().lower()
        if not sep or not name:
            problems.append(f"--transport {setting!r}: use NAME=MODE with MODE one of {', '.join(TRANSPORTS)}")
        elif name not in by_name:
            problems.append(f"--transport {setting!r}: no stream named {name!r}")
        else:
            try:
                out[by_name[name]] = check_transport(out[by_name[name]], mode)
            except ConfigError as exc:
                problems.append(f"--transport {setting!r}: {exc.message}")
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def parse_source(text: str, *, check_file: bool = True) -> SourceSpec:
    """Parse ``NAME=URL`` or ``URL``. URLs: ``demo``, a file path or ``file://`` URL, ``rtsp://`` or
    ``rtsps://`` (a camera; the default name is its host).

    ``check_file=False`` leaves a file's existence to the caller: :class:`stream.policy.SourcePolicy` checks
    untrusted sources without telling a missing file from a forbidden one.
    """
    name: str | None = None
    url = text.strip()
    head, sep, tail = url.partition("=")
    if sep and ":" not in head and "/" not in head and "\\" not in head:  # NAME=URL, not a path holding "="
        name, url = check_name(head.strip()), tail.strip()
    label = f"source {name!r}" if name else "source"
    if not url:
        raise ConfigError(f"{label} has no URL")
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else ""
    if url == "demo":
        return SourceSpec(check_name(name or "demo"), "demo", "demo")
    if scheme in ("", "file"):
        path = url
        if scheme == "file":
            try:
                path = urlsplit(url).path
            except ValueError:
                raise ConfigError(f"{label}: not a valid file:// URL") from None
        if check_file and not os.path.isfile(path):
            # A path holding "@" may be a mistyped camera URL with credentials: do not echo it.
            shown = f" {path!r}" if "@" not in path else " (a camera URL starts with rtsp:// or rtsps://)"
            raise ConfigError(f"{label}: no such file{shown}")
        stem = os.path.splitext(os.path.basename(path))[0]
        default = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "file"
        return SourceSpec(check_name(name or default), "file", path)
    if scheme in ("rtsp", "rtsps"):
        try:
            cam = parse_camera_url(url)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc.message}") from None
        default = re.sub(r"[^A-Za-z0-9_.-]", "_", cam.host).strip("_.-")[:64] or "camera"
        return SourceSpec(check_name(name or default), "rtsp", cam.url())
    raise ConfigError(
        f"{label} {redact(url)!r}: unsupported scheme {scheme!r} (supported: demo, a file path, rtsp://, rtsps://)"
    )
