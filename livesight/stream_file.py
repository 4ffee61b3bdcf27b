"""The streams file: ``livesight serve --config FILE.toml`` starts with the cameras it lists.

    [[streams]]
    name = "door"                               # 1-64 letters, digits, '_', '.', '-'
    url = "rtsp://user:secret@10.0.0.5/stream1"  # rtsp://, rtsps://, a video file, or demo
    fps = 2                                     # optional: frames sampled per second (default: --fps)
    transport = "udp"                           # optional, cameras: tcp, udp or auto (default: auto)

Validated once at startup; unknown keys are rejected and every problem is reported at once, each with
the entry it belongs to (its position and name), never with a URL's credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from livesight.errors import ConfigError
from stream.spec import SourceSpec, check_name, check_transport, parse_source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class StreamEntry(BaseModel):
    """One ``[[streams]]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the stream's name, used to ask about it")
    url: str = Field(description="rtsp://, rtsps://, a video file path, or demo; credentials are never shown")
    fps: float | None = Field(None, gt=0, le=30, description="frames sampled per second; default: --fps")
    transport: Literal["tcp", "udp", "auto"] | None = Field(
        None, description="cameras only: how the video travels, tcp, udp or auto (TCP, then UDP); default auto"
    )


class StreamsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    streams: list[StreamEntry] = Field(min_length=1, description="the streams to start with")


def load_streams_file(path: str) -> list[SourceSpec]:
    """The validated streams of the TOML file at ``path``; raises one :class:`ConfigError` listing every
    problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    return parse_streams(data, where=path)


def parse_streams(data: dict[str, Any], *, where: str = "config") -> list[SourceSpec]:
    """Validate the parsed contents of a streams file (see the module doc)."""
    problems: list[str] = []
    raw = data.get("streams")
    entries: list[tuple[int, StreamEntry]] = []
    try:
        entries = list(enumerate(StreamsFile.model_validate(data).streams))
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(_describe(err["loc"], err["msg"], raw))
        # Check the entries that are fine on their own too, so one run lists every problem.
        if isinstance(raw, list):
            for i, item in enumerate(raw):
                with contextlib.suppress(ValidationError):  # already reported above, with its location
                    entries.append((i, StreamEntry.model_validate(item)))
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
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return specs


def _describe(loc: tuple[int | str, ...], msg: str, raw: object) -> str:
    if len(loc) >= 2 and loc[0] == "streams" and isinstance(loc[1], int):
        i = loc[1]
        item = raw[i] if isinstance(raw, list) and i < len(raw) else None
        name = item.get("name") if isinstance(item, dict) else None
        label = f"streams[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")
        field = ".".join(str(p) for p in loc[2:])
        return f"{label}: {field + ': ' if field else ''}{msg}"
    return f"{'.'.join(str(p) for p in loc) or 'file'}: {msg}"
