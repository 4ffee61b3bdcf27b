"""The pieces of ``serve --ray`` that run without Ray: placement by load, typed errors that cross processes
as themselves, the relayed source of WHIP publishers, two archives sharing one file, and a shard
(cluster/shard.py) driven in this process with the tiny model: it opens, reports, answers, refuses with
typed events, honours a cancel that overtook its question, and a shard opened again on the same archive
rebuilds the memory. The real cluster is in tests/test_ray.py."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

import errors
from cluster.messages import Asked, Report
from cluster.placement import Placement
from cluster.relay import RelayedSource
from cluster.shard import Shard
from engine.build import EngineRecipe
from engine.engine import EngineSettings
from engine.events import FINAL, Answered, Cancelled, Failed, QuestionEvent, StreamInfo, Token
from engine.recall import AUTO
from errors import Busy, ConfigError, Conflict, LivesightError, UnknownStream
from livesight.cli import build_parser
from livesight.config import load_serve_config
from store.archive import Archive
from stream.frame import Frame
from stream.source import SourceState
from stream.spec import SourceSpec, parse_source
from tests.test_archive import clip, wait_written


# --- placement ---------------------------------------------------------------------------------------
def test_new_streams_go_to_the_least_loaded_shard() -> None:
    p = Placement(3, capacity=2)
    assert [p.place(n) for n in ("a", "b", "c")] == [0, 1, 2]  # fewest streams, then the lowest index
    assert p.place("d", queued=[5, 0, 3]) == 1  # equal streams: fewest questions waiting
    assert p.place("e", down=[0]) == 2  # a shard that is down only when nothing else can take it
    assert p.place("f") == 0
    assert p.load(0) == p.load(1) == p.load(2) == 2
    with pytest.raises(Busy):
        p.place("g")
    with pytest.raises(Conflict):
        p.place("a")
    assert p.on(1) == ["b", "d"] and p.names() == ["a", "b", "c", "d", "e", "f"]


def test_moving_and_removing_streams() -> None:
    p = Placement(2, capacity=2)
    for n in ("a", "b", "c"):
        p.place(n)
    assert p.on(0) == ["a", "c"] and p.on(1) == ["b"]
    assert p.move("a", 1) == 0
    assert p.shard_of("a") == 1 and p.load(0) == 1
    with pytest.raises(Busy):
        p.move("c", 1)  # shard 1 is full
    assert p.move("c", 0) == 0  # where it is already
    assert p.choose() == 0
    assert p.remove("b") == 1 and "b" not in p
    with pytest.raises(UnknownStream):
        p.remove("b")
    with pytest.raises(UnknownStream):
        p.move("b", 0)


# --- errors across processes --------------------------------------------------------------------------
def _subclasses(cls: type[LivesightError]) -> list[type[LivesightError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


@pytest.mark.parametrize("cls", sorted({c for c in _subclasses(LivesightError) if c.__module__ == "errors"}, key=str))
def test_typed_errors_pickle_as_themselves(cls: type[LivesightError]) -> None:
    """A shard's error reaches the gateway as the same class, message and retryable (also when set
    against the class's default), inside the event that carries it."""
    assert hasattr(errors, cls.__name__)
    for retryable in (True, False):
        ev = Failed("q1", cls("why it failed", retryable=retryable))
        back = pickle.loads(pickle.dumps(ev))
        assert type(back.error) is cls
        assert (back.error.message, back.error.retryable, back.error.kind) == ("why it failed", retryable, cls.kind)


def test_a_lost_shard_is_a_retryable_unavailable_error() -> None:
    err = errors.ShardUnavailable("restarting")
    assert err.retryable and err.kind is errors.Kind.UNAVAILABLE


# --- the relayed source (WHIP through the gateway) ---------------------------------------------------
def frame(i: int) -> Frame:
    return Frame("pub", i, float(i), 1000.0 + i, np.zeros((4, 4, 3), dtype=np.uint8))


async def test_a_relayed_source_keeps_the_newest_frame_and_ends_when_told() -> None:
    src = RelayedSource("pub")
    got: list[int] = []

    async def read() -> None:
        async for f in src:
            got.append(f.index)

    src.put(frame(0))
    src.put(frame(1))  # replaces 0, not taken yet
    reader = asyncio.create_task(read(), name="relay-reader")
    await asyncio.sleep(0.01)
    src.put(frame(2))
    src.end(SourceState.OFFLINE, "the publisher failed")  # a frame still waiting is handed on first
    await asyncio.wait_for(reader, 5)
    assert got == [1, 2]
    assert src.stats.dropped == 1 and src.stats.frames == 3
    assert src.stats.state is SourceState.OFFLINE and src.stats.error == "the publisher failed"
    src.put(frame(3))  # after the end: ignored
    assert src.stats.frames == 3


# --- two processes on one archive --------------------------------------------------------------------
def test_a_second_archive_on_the_same_file_adopts_a_stream_and_flush_waits_for_writes(tmp_path: Path) -> None:
    a = Archive(tmp_path, model="m1")
    b = Archive(tmp_path, model="m1")
    a.start()
    b.start()
    try:
        for i in range(3):
            a.put_clip("cam", clip(i))
        assert a.flush(10)
        assert a.reader().stats("cam")[0] == 3  # written when flush returned
        assert b.summary("cam").clips == 0  # b started before: it has not seen them
        b.adopt("cam")
        assert b.flush(10)
        assert b.summary("cam").clips == 3 and b.summary("cam").bytes == a.summary("cam").bytes
        b.put_clip("cam", clip(3))
        wait_written(b, "cam", 4)
    finally:
        a.close()
        b.close()
    assert not a.flush(1)  # closed: nothing to wait for


# --- a shard in this process ---------------------------------------------------------------------------
def recipe(data: Path) -> EngineRecipe:
    return EngineRecipe(
        model="tiny-random", settings=EngineSettings(fps=2.0), device="cpu", lossless=True, data_dir=str(data)
    )


def asked(ticket: str, stream: str, *, tokens: int = 6) -> Asked:
    return Asked(ticket, f"q-{ticket}", stream, "What do you see?", tokens, None, 0.0, "me", None, AUTO, False, None)


async def collect(events: AsyncIterator[QuestionEvent]) -> list[QuestionEvent]:
    return [ev async for ev in events]


async def next_report(reports: AsyncIterator[Report], until: object, timeout: float = 60.0) -> Report:
    async with asyncio.timeout(timeout):
        async for report in reports:
            if until(report):  # type: ignore[operator]
                return report
    raise AssertionError("the reports ended")


def by_name(report: Report) -> dict[str, StreamInfo]:
    return {i.name: i for i in report.infos}


async def test_a_shard_opens_reports_answers_and_refuses_with_typed_events(tmp_path: Path) -> None:
    shard = Shard(0, recipe(tmp_path), report_s=0.1)
    try:
        odd = SourceSpec("odd", "nothing-reads-this", "nowhere")  # one stream that cannot start
        hello = await shard.open([parse_source("a=demo"), odd, parse_source("b=demo")])
        assert hello.streams == ("a", "b") and hello.model_id and hello.budget > 0
        assert [name for name, _ in hello.refused] == ["odd"] and "no source for kind" in hello.refused[0][1]
        again = await shard.open([parse_source("a=demo")])  # idempotent: running streams are kept
        assert again.streams == ("a", "b")
        reports = shard.reports()
        first = await next_report(reports, lambda r: r.changes)
        assert {ev.stream for ev in first.changes} <= {"a", "b"}
        await next_report(reports, lambda r: all(i.archive and i.archive.clips >= 2 for i in r.infos))

        events = await collect(shard.ask(asked("t1", "a")))
        assert isinstance(events[-1], Answered) and all(isinstance(e, Token) for e in events[:-1])
        assert sum(isinstance(e, FINAL) for e in events) == 1

        (refused,) = await collect(shard.ask(asked("t2", "nope")))
        assert isinstance(refused, Failed) and isinstance(refused.error, UnknownStream)

        await shard.cancel("t3")  # the cancel overtook its question
        assert await collect(shard.ask(asked("t3", "a"))) == [Cancelled("q-t3")]

        await shard.remove_stream("b")  # its clips are on disk when this returns
        removed = await next_report(reports, lambda r: any(ev.info is None for ev in r.changes))
        assert [ev.stream for ev in removed.changes if ev.info is None] == ["b"]
        assert set(by_name(removed)) == {"a"}
        with pytest.raises(UnknownStream):
            await shard.push("a", frame(0))  # not a relayed stream
        before = by_name(await next_report(reports, lambda r: True))["a"]
    finally:
        await shard.close()
    assert before.memory_span is not None and before.archive is not None

    # Opened again on the same archive (a restarted shard): the stream comes back with its memory.
    shard = Shard(0, recipe(tmp_path), report_s=0.1)
    try:
        await shard.open([parse_source("a=demo")])
        report = await next_report(shard.reports(), lambda r: by_name(r)["a"].restored_frames > 0)
        after = by_name(report)["a"]
        assert after.memory_span is not None and after.memory_span[0] <= before.memory_span[0]
    finally:
        await shard.close()


async def test_a_shard_that_is_not_open_refuses_with_a_retryable_error(tmp_path: Path) -> None:
    shard = Shard(3, recipe(tmp_path))
    (refused,) = await collect(shard.ask(asked("t1", "a")))
    assert isinstance(refused, Failed) and isinstance(refused.error, errors.ShardUnavailable)
    assert refused.error.retryable
    with pytest.raises(errors.ShardUnavailable):
        await shard.add_stream(parse_source("a=demo"))


def test_the_single_process_server_does_not_import_ray() -> None:
    """Ray is an optional extra: ``serve`` without --ray (and the CLI) never import it or cluster/."""
    code = (
        "import sys, livesight.cli, livesight.serve, web.server, engine.build; "
        "bad = [m for m in ('ray', 'cluster', 'cluster.gateway') if m in sys.modules]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_serve_takes_ray_and_shards() -> None:
    args = build_parser().parse_args(["serve", "--ray", "auto", "--shards", "3"])
    assert (args.ray, args.shards) == ("auto", 3)
    cfg = load_serve_config({"token": "t" * 16, "ray": args.ray, "shards": args.shards})
    assert (cfg.ray, cfg.shards) == ("auto", 3)
    assert load_serve_config({"token": "t" * 16}).ray is None  # one process by default
    with pytest.raises(ConfigError, match="--shards needs --ray"):
        load_serve_config({"token": "t" * 16, "shards": 2})
    with pytest.raises(ConfigError, match="shards"):
        load_serve_config({"token": "t" * 16, "ray": "local", "shards": 0})
    with pytest.raises(ConfigError, match="not available with --ray yet"):
        load_serve_config({"token": "t" * 16, "ray": "local", "webhooks": ["http://127.0.0.1:9/hook"]})
