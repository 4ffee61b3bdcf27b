"""The configuration file: ``livesight serve --config FILE.toml`` starts with the cameras and viewers it lists.

    [[streams]]
    name = "door"                               # 1-64 letters, digits, '_', '.', '-'
    url = "rtsp://user:secret@10.0.0.5/stream1"  # rtsp://, rtsps://, a video file, or demo
    fps = 2                                     # optional: frames sampled per second (default: --fps)
    transport = "udp"                           # optional, cameras: tcp, udp or auto (default: auto)
    caption_every_s = 60                        # optional: a one-sentence caption into the timeline every 60 s

    [[watches]]                                 # alert when a condition starts to hold (see README, Watches)
    stream = "door"
    condition = "a person is at the door"       # 1-300 characters, asked as a yes/no question
    every_s = 5                                 # optional: seconds of video between evaluations (default 5)
    min_duration_s = 0                          # optional: how long it must hold before it alerts (default 0)
    cooldown_s = 60                             # optional: no second alert within this (default 60)
    threshold = 0.6                             # optional: P(yes) at which it holds (default 0.6)
    describe = true                             # optional: a one-sentence description after each alert
    webhook = "https://hooks.example.com/door"  # optional: also POST this watch's alerts here

    webhooks = ["https://hooks.example.com/all"]  # every alert is POSTed here too (and to --webhook)

    [[viewers]]                                 # a token that sees only some streams (see README, Security)
    name = "lobby-screen"                       # for logs
    token_file = "/run/secrets/lobby-token"     # or token_env = "LOBBY_TOKEN" (never the token itself)
    streams = ["door"]

Validated once at startup; unknown keys are rejected and every problem is reported at once, each with
the entry it belongs to (its position and name), never with a URL's credentials or a token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.watches import (
    DEFAULT_COOLDOWN_S,
    DEFAULT_EVERY_S,
    DEFAULT_THRESHOLD,
    HYSTERESIS,
    MAX_CONDITION_CHARS,
    MAX_DURATION_S,
    MAX_EVERY_S,
    MAX_WATCHES_PER_STREAM,
    MIN_EVERY_S,
    WatchSpec,
)
from errors import ConfigError
from stream.spec import SourceSpec, check_name, check_transport, parse_source
from web.auth import Viewer
from web.protocol import check_webhook

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MIN_TOKEN_CHARS = 8


class StreamEntry(BaseModel):
    """One ``[[streams]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the stream's name, used to ask about it")
    url: str = Field(description="rtsp://, rtsps://, a video file path, or demo; credentials are never shown")
    fps: float | None = Field(None, gt=0, le=30, description="frames sampled per second; default: --fps")
    transport: Literal["tcp", "udp", "auto"] | None = Field(
        None, description="cameras only: how the video travels, tcp, udp or auto (TCP, then UDP); default auto"
    )
    caption_every_s: float | None = Field(
        None, ge=10, le=86400, description="a one-sentence caption of the video into the timeline this often"
    )


class WatchEntry(BaseModel):
    """One ``[[watches]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: str = Field(description="the stream to watch")
    condition: str = Field(
        min_length=1, max_length=MAX_CONDITION_CHARS, description="what to watch for, asked as a yes/no question"
    )
    every_s: float = Field(DEFAULT_EVERY_S, ge=MIN_EVERY_S, le=MAX_EVERY_S, description="seconds between evaluations")
    min_duration_s: float = Field(0.0, ge=0, le=MAX_DURATION_S, description="how long it holds before alerting")
    cooldown_s: float = Field(DEFAULT_COOLDOWN_S, ge=0, le=MAX_DURATION_S, description="no second alert within")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=HYSTERESIS, lt=1, description="P(yes) at which it holds")
    describe: bool = Field(False, description="a one-sentence description after each alert")
    webhook: str | None = Field(None, max_length=2048, description="also POST this watch's alerts here")


class ViewerEntry(BaseModel):
    """One ``[[viewers]]`` table: a token limited to some streams."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="who holds it, for logs")
    token_file: str | None = Field(None, description="a file holding the token (first line)")
    token_env: str | None = Field(None, description="an environment variable holding the token")
    streams: list[str] = Field(min_length=1, description="the streams this token may see and ask about")


class ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    streams: list[StreamEntry] = Field(default_factory=list, description="the streams to start with")
    viewers: list[ViewerEntry] = Field(default_factory=list, description="tokens limited to named streams")
    watches: list[WatchEntry] = Field(default_factory=list, description="conditions to alert on")
    webhooks: list[str] = Field(default_factory=list, description="URLs every alert is POSTed to")


@dataclass(frozen=True, slots=True)
class FileConfig:
    """What a configuration file holds, validated."""

    streams: list[SourceSpec]
    viewers: list[Viewer]
    watches: list[WatchSpec] = dataclasses.field(default_factory=list)
    captions: dict[str, float] = dataclasses.field(default_factory=dict)  # stream -> seconds between captions
    webhooks: list[str] = dataclasses.field(default_factory=list)


def load_config_file(path: str, environ: Mapping[str, str] | None = None) -> FileConfig:
    """The validated contents of the TOML file at ``path``; raises one :class:`ConfigError` listing every
    problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    return parse_config(data, where=path, environ=os.environ if environ is None else environ)


def load_streams_file(path: str) -> list[SourceSpec]:
    """The streams of the configuration file at ``path`` (see :func:`load_config_file`)."""
    return load_config_file(path).streams


def parse_config(
    data: dict[str, Any], *, where: str = "config", environ: Mapping[str, str] | None = None
) -> FileConfig:
    """Validate the parsed contents of a configuration file (see the module doc)."""
    problems: list[str] = []
    entries: list[tuple[int, StreamEntry]] = []
    viewers: list[tuple[int, ViewerEntry]] = []
    watch_entries: list[tuple[int, WatchEntry]] = []
    webhooks: list[str] = []
    try:
        parsed = ConfigFile.model_validate(data)
        entries, viewers = list(enumerate(parsed.streams)), list(enumerate(parsed.viewers))
        watch_entries, webhooks = list(enumerate(parsed.watches)), parsed.webhooks
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(_describe(err["loc"], err["msg"], data))
        # Check the entries that are fine on their own too, so one run lists every problem.
        for key, model, out in (
            ("streams", StreamEntry, entries),
            ("viewers", ViewerEntry, viewers),
            ("watches", WatchEntry, watch_entries),
        ):
            raw = data.get(key)
            if isinstance(raw, list):
                for i, item in enumerate(raw):
                    with contextlib.suppress(ValidationError):  # already reported above, with its location
                        out.append((i, model.model_validate(item)))  # type: ignore[arg-type]
        raw_hooks = data.get("webhooks")
        if isinstance(raw_hooks, list):
            webhooks = [u for u in raw_hooks if isinstance(u, str)]
    if not any(data.get(k) for k in ("streams", "viewers", "watches", "webhooks")) and not problems:
        problems.append("file: it lists no [[streams]], [[viewers]] or [[watches]]")
    specs = _streams(entries, problems)
    tokens = _viewers(viewers, problems, os.environ if environ is None else environ)
    watches = _watches(watch_entries, problems)
    for i, url in enumerate(webhooks):
        try:
            check_webhook(url)
        except ValueError as exc:
            problems.append(f"webhooks[{i}]: {exc}")
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    captions = {e.name: e.caption_every_s for _, e in entries if e.caption_every_s is not None}
    return FileConfig(specs, tokens, watches, captions, list(webhooks))


def parse_streams(data: dict[str, Any], *, where: str = "config") -> list[SourceSpec]:
    """Validate a configuration holding ``[[streams]]`` (see the module doc)."""
    return parse_config(data, where=where).streams


def _streams(entries: list[tuple[int, StreamEntry]], problems: list[str]) -> list[SourceSpec]:
    specs: list[SourceSpec] = []
    seen: dict[str, int] = {}
    for i, entry in entries:
        label = f"streams[{i}] ({entry.name!r})"
        bad = len(problems)
        try:
            check_name(entry.name)
        except ConfigError as exc:
            problems.append(f"{label}: name: {exc.message}")
        try:
            spec = parse_source(entry.url)
        except ConfigError as exc:
            problems.append(f"{label}: url: {exc.message}")
        else:
            if entry.transport is not None:
                try:
                    spec = check_transport(spec, entry.transport)
                except ConfigError as exc:
                    problems.append(f"{label}: transport: {exc.message}")
        if len(problems) > bad:
            continue
        if entry.name in seen:
            problems.append(f"{label}: the name is already used by streams[{seen[entry.name]}]")
            continue
        seen[entry.name] = i
        specs.append(dataclasses.replace(spec, name=entry.name, fps=entry.fps))
    return specs


def _watches(entries: list[tuple[int, WatchEntry]], problems: list[str]) -> list[WatchSpec]:
    out: list[WatchSpec] = []
    seen: dict[tuple[str, str], int] = {}
    per_stream: dict[str, int] = {}
    for i, e in entries:
        label = f"watches[{i}] ({e.stream!r})"
        bad = len(problems)
        try:
            check_name(e.stream)
        except ConfigError as exc:
            problems.append(f"{label}: stream: {exc.message}")
        if not e.condition.strip():
            problems.append(f"{label}: condition: blank")
        if e.webhook is not None:
            try:
                check_webhook(e.webhook)
            except ValueError as exc:
                problems.append(f"{label}: webhook: {exc}")
        key = (e.stream, e.condition.strip())
        if key in seen:
            problems.append(f"{label}: the same condition is already watched by watches[{seen[key]}]")
        per_stream[e.stream] = per_stream.get(e.stream, 0) + 1
        if per_stream[e.stream] == MAX_WATCHES_PER_STREAM + 1:
            problems.append(f"{label}: more than {MAX_WATCHES_PER_STREAM} watches on stream {e.stream!r}")
        if len(problems) > bad:
            continue
        seen[key] = i
        out.append(
            WatchSpec(
                stream=e.stream,
                condition=e.condition.strip(),
                every_s=e.every_s,
                min_duration_s=e.min_duration_s,
                cooldown_s=e.cooldown_s,
                threshold=e.threshold,
                describe=e.describe,
                webhook=e.webhook,
                origin="config",
            )
        )
    return out


def _viewers(entries: list[tuple[int, ViewerEntry]], problems: list[str], environ: Mapping[str, str]) -> list[Viewer]:
    out: list[Viewer] = []
    for i, entry in entries:
        label = f"viewers[{i}] ({entry.name!r})"
        for name in entry.streams:
            try:
                check_name(name)
            except ConfigError as exc:
                problems.append(f"{label}: streams: {exc.message}")
        token = read_token(entry.token_file, entry.token_env, environ, problems, label)
        if token is not None:
            out.append(Viewer(entry.name, token, frozenset(entry.streams)))
    return out


def read_token(
    path: str | None, env: str | None, environ: Mapping[str, str], problems: list[str], label: str
) -> str | None:
    """A token from a file (its first line) or an environment variable; problems are appended, never
    with the token in them."""
    if (path is None) == (env is None):
        problems.append(f"{label}: give exactly one of token_file and token_env")
        return None
    if path is not None:
        try:
            with open(path) as f:
                token = f.readline().strip()
        except OSError as exc:
            problems.append(f"{label}: cannot read token_file {path!r}: {exc.strerror}")
            return None
    else:
        assert env is not None
        token = environ.get(env, "").strip()
        if not token:
            problems.append(f"{label}: environment variable {env} is not set")
            return None
    if len(token) < MIN_TOKEN_CHARS:
        problems.append(f"{label}: the token is shorter than {MIN_TOKEN_CHARS} characters")
        return None
    return token


def _describe(loc: tuple[int | str, ...], msg: str, data: dict[str, Any]) -> str:
    if len(loc) >= 2 and loc[0] in ("streams", "viewers", "watches") and isinstance(loc[1], int):
        raw = data.get(str(loc[0]))
        i = loc[1]
        item = raw[i] if isinstance(raw, list) and i < len(raw) else None
        name = item.get("name", item.get("stream")) if isinstance(item, dict) else None
        label = f"{loc[0]}[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")
        field = ".".join(str(p) for p in loc[2:])
        return f"{label}: {field + ': ' if field else ''}{msg}"
    return f"{'.'.join(str(p) for p in loc) or 'file'}: {msg}"
