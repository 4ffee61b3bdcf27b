"""The client subcommands of ``livesight`` (``ask``, ``streams``, ``add``, ``remove``, ``status``, ``watch``,
``unwatch``, ``watches``, ``events``), built on
:mod:`livesight.client`. Each returns an exit code or raises a :class:`ClientError`, which ``livesight``
turns into 1 (retryable) or 2.

Like the client library, this module imports neither torch nor transformers: client commands start fast
(``bench/cli_start.py``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Literal, TextIO

from livesight.client import (
    Alert,
    AlertUpdate,
    Client,
    ClientError,
    Status,
    StreamInfo,
    TimelineEvent,
    UnknownStreamError,
    WatchInfo,
)


async def ask(
    url: str,
    token: str,
    stream: str,
    question: str,
    *,
    session: str | None = None,
    max_new_tokens: int = 128,
    raw: bool = False,
    recall: Literal["auto", "off"] | tuple[str, str] | tuple[float, float] = "auto",
    detail: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print the answer as it streams, then its context and timing on ``err`` (``raw``: every message of
    the question as a JSON line)."""
    async with Client(url, token, reconnect=False) as client:
        q = client.ask(
            stream,
            question,
            session=session,
            max_new_tokens=max_new_tokens,
            recall=recall,
            detail=detail,
        )
        if raw:
            async for msg in q.messages():
                out.write(msg.model_dump_json(exclude_unset=True) + "\n")
                out.flush()
            return 0
        async for piece in q:
            out.write(piece)
            out.flush()
        answer = await q
        out.write("\n")
        ctx, timing = answer.context, answer.timing
        err.write(
            f"[context: {ctx.frames} frames, {ctx.tokens} tokens, stream time {_t(ctx.start)}-{_t(ctx.end)}; "
            f"first token {timing.ttft_ms:.0f} ms, total {timing.total_ms:.0f} ms]\n"
        )
    return 0


async def streams(url: str, token: str, *, raw: bool = False, out: TextIO = sys.stdout) -> int:
    """A table of the streams this token may see (``raw``: a JSON array)."""
    async with Client(url, token, reconnect=False) as client:
        infos = await client.streams()
    if raw:
        out.write(json.dumps([i.model_dump(mode="json") for i in infos]) + "\n")
    elif not infos:
        out.write("no streams\n")
    else:
        out.write(table(infos))
    return 0


async def add(url: str, token: str, name: str, source: str, *, out: TextIO = sys.stdout) -> int:
    async with Client(url, token, reconnect=False) as client:
        added = await client.add_stream(name, source)
    out.write(f"added {added.stream}: {added.source}\n")
    return 0


async def remove(url: str, token: str, name: str, *, out: TextIO = sys.stdout) -> int:
    async with Client(url, token, reconnect=False) as client:
        removed = await client.remove_stream(name)
    out.write(f"removed {removed.stream}\n")
    return 0


async def status(
    url: str,
    token: str,
    names: Sequence[str],
    *,
    follow: bool = False,
    raw: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Each stream's status (``names``, or every stream); ``follow``: then every change, reconnecting when
    the connection drops, until interrupted or every stream followed is gone."""

    def show(st: Status) -> None:
        out.write(st.model_dump_json(exclude_unset=True) + "\n" if raw else status_line(st, time.localtime()))
        out.flush()

    def connection(up: bool, why: ClientError | None) -> None:
        err.write("livesight: reconnected\n" if up else f"livesight: connection lost ({why}); reconnecting\n")
        err.flush()

    async with Client(url, token, on_connection=connection if follow else None) as client:
        if not follow:
            infos = {i.name: i for i in await client.streams()}
            for name in names:
                if name not in infos:
                    raise UnknownStreamError(f"no stream named {name!r}")
            for info in infos.values():
                if not names or info.name in names:
                    show(Status.model_validate({**info.model_dump(exclude={"name"}), "stream": info.name}))
            return 0
        wanted = tuple(names) or client.ready.streams
        if not wanted:
            err.write("livesight: no streams to follow\n")
            return 0
        async with await client.subscribe(*wanted) as sub:
            async for st in sub:
                show(st)
    return 0


async def watch(
    url: str,
    token: str,
    stream: str,
    condition: str,
    *,
    every_s: float = 5.0,
    min_duration_s: float = 0.0,
    cooldown_s: float = 60.0,
    threshold: float = 0.6,
    describe: bool = False,
    webhook: str | None = None,
    keep: bool = False,
    raw: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Add a watch and print its alerts as they come (``raw``: as JSON lines) until interrupted; then the
    watch is removed again, unless ``keep``."""

    def connection(up: bool, why: ClientError | None) -> None:
        err.write("livesight: reconnected\n" if up else f"livesight: connection lost ({why}); reconnecting\n")
        err.flush()

    async with Client(url, token, on_connection=connection) as client:
        info = await client.watch(
            stream,
            condition,
            every_s=every_s,
            min_duration_s=min_duration_s,
            cooldown_s=cooldown_s,
            threshold=threshold,
            describe=describe,
            webhook=webhook,
        )
        err.write(f"watching {info.stream} for {info.condition!r} every {info.every_s:g} s (watch {info.id})\n")
        err.flush()
        try:
            async with await client.follow(stream) as feed:
                async for msg in feed:
                    if not isinstance(msg, (Alert, AlertUpdate)) or msg.watch != info.id:
                        continue
                    out.write(msg.model_dump_json(exclude_unset=True) + "\n" if raw else alert_line(msg))
                    out.flush()
        finally:
            if not keep:
                try:
                    await client.unwatch(info.id)
                except ClientError as exc:  # gone already, or the server is
                    err.write(f"livesight: watch {info.id} not removed: {exc}\n")
    return 0


async def unwatch(url: str, token: str, watch_id: int, *, out: TextIO = sys.stdout) -> int:
    async with Client(url, token, reconnect=False) as client:
        gone = await client.unwatch(watch_id)
    out.write(f"removed watch {gone.watch} on {gone.stream}\n")
    return 0


async def watches(
    url: str, token: str, stream: str | None = None, *, raw: bool = False, out: TextIO = sys.stdout
) -> int:
    """A table of the watches this token may see (``raw``: a JSON array)."""
    async with Client(url, token, reconnect=False) as client:
        found = await client.watches(stream)
    if raw:
        out.write(json.dumps([w.model_dump(mode="json") for w in found]) + "\n")
    elif not found:
        out.write("no watches\n")
    else:
        out.write(watch_table(found))
    return 0


async def events(
    url: str,
    token: str,
    *,
    stream: str | None = None,
    watch: int | None = None,
    since: str | None = None,
    until: str | None = None,
    text: str | None = None,
    limit: int = 50,
    raw: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """The timeline, newest first (``raw``: one JSON line per event)."""
    async with Client(url, token, reconnect=False) as client:
        found = await client.events(stream=stream, watch=watch, since=since, until=until, text=text, limit=limit)
    for e in found:
        out.write(e.model_dump_json() + "\n" if raw else event_line(e))
    if not found and not raw:
        out.write("no events\n")
    return 0


# --- formatting ----------------------------------------------------------------------------------------
COLUMNS = ("NAME", "STATE", "SOURCE", "FPS", "FRAMES", "DROPPED", "MEMORY", "SPAN", "LAST FRAME", "ERROR")


def table(infos: Sequence[StreamInfo]) -> str:
    rows = [COLUMNS] + [
        (
            i.name,
            i.state,
            i.source,
            f"{i.fps:g}",
            str(i.frames),
            str(i.dropped),
            f"{i.memory_tokens} tok/{i.memory_frames} fr",
            _span(i.memory_span),
            "-" if i.last_frame_age_s is None else f"{i.last_frame_age_s:.1f}s ago",
            i.error or "",
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    return "".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def status_line(st: Status, now: time.struct_time) -> str:
    """``HH:MM:SS stream state`` and, unless removed, its counts."""
    line = f"{time.strftime('%H:%M:%S', now)} {st.stream} {st.state}"
    if not st.removed:
        line += f" frames={st.frames} dropped={st.dropped} memory={st.memory_tokens} span={_span(st.memory_span)}"
        if st.error:
            line += f" error={st.error!r}"
    return line + "\n"


def alert_line(msg: Alert | AlertUpdate) -> str:
    """One line per alert or update: when, where, what."""
    if isinstance(msg, Alert):
        score = "-" if msg.score is None else f"{msg.score:.2f}"
        line = f"{msg.time} ALERT {msg.stream} [watch {msg.watch}, event {msg.event}] {msg.condition} (P(yes) {score}"
        line += f", {_t(msg.stream_time)})"
        return line + (f" {msg.snapshot}" if msg.snapshot else "") + "\n"
    if msg.ended is not None:
        return f"{msg.ended} ENDED {msg.stream} [event {msg.event}]\n"
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S')} DESCRIBED {msg.stream} [event {msg.event}] {msg.description}\n"


def event_line(e: TimelineEvent) -> str:
    what = e.condition if e.kind == "alert" else e.text
    line = f"{e.time} {e.kind.upper()} {e.stream} [event {e.id}] {what}"
    if e.kind == "alert" and e.text:
        line += f": {e.text}"
    if e.ended:
        line += f" (until {e.ended})"
    return line + (f" {e.snapshot}" if e.snapshot else "") + "\n"


WATCH_COLUMNS = ("ID", "STREAM", "STATE", "EVERY", "SCORE", "EVALS", "DROPPED", "ALERTS", "CONDITION")


def watch_table(found: Sequence[WatchInfo]) -> str:
    rows = [WATCH_COLUMNS] + [
        (
            str(w.id),
            w.stream,
            w.state,
            f"{w.every_s:g}s",
            "-" if w.score is None else f"{w.score:.2f}",
            str(w.evaluations),
            str(w.dropped),
            str(w.alerts),
            w.condition + (f" (error: {w.error})" if w.error else ""),
        )
        for w in found
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(WATCH_COLUMNS))]
    return "".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def _span(span: tuple[float, float] | None) -> str:
    return "-" if span is None else f"{span[0]:.1f}-{span[1]:.1f}s"


def _t(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"
