"""The archive end to end, on real server processes: killed with SIGKILL mid-stream and restarted on the same
--data, a stream's memory span and a conversation's turns come back; retention holds a fast two-hour run
to --retain and --retain-bytes; another model ignores the archive."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from livesight.client import StreamInfo, SyncClient
from store.archive import DB_NAME
from tests.support.process import TOKEN, server


def demo(url: str) -> StreamInfo:
    with SyncClient(url, TOKEN, reconnect=False) as c:
        (info,) = c.streams()
        return info


def wait(url: str, ok: object, within: float, what: str) -> StreamInfo:
    deadline = time.monotonic() + within
    while True:
        info = demo(url)
        if ok(info):  # type: ignore[operator]
            return info
        assert time.monotonic() < deadline, f"{what}: {info}"
        time.sleep(0.2)


def test_a_killed_server_comes_back_with_its_memory_and_conversations(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    with server(data, log, "--fast") as (proc, url):
        # Enough stream for clips to be archived, and a conversation of two turns.
        before = wait(url, lambda i: i.archive is not None and i.archive.clips >= 40, 90, "clips archived")
        with SyncClient(url, TOKEN, reconnect=False) as c:
            for question in ("What do you see?", "And now?"):
                c.ask("demo", question, session="s1", max_new_tokens=4).answer(timeout=60)
        # The turns are written by the archive's thread: wait until both are on disk, then kill.
        deadline = time.monotonic() + 20
        db = data / DB_NAME
        while sqlite3.connect(db).execute("SELECT COUNT(*) FROM turns").fetchone()[0] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = demo(url)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert before.archive is not None and before.memory_span is not None
    with server(data, log) as (_, url):
        after = wait(url, lambda i: i.restored_frames > 0, 60, "the memory rebuilt")
        assert after.memory_span is not None and after.archive is not None
        # The rebuilt memory reaches back as far as before the kill (its oldest in-context moment).
        assert after.memory_span[0] <= before.memory_span[0] + 1.0, (before.memory_span, after.memory_span)
        assert after.archive.clips >= before.archive.clips
        with SyncClient(url, TOKEN, reconnect=False) as c:
            answer = c.ask("demo", "Anything new?", session="s1", max_new_tokens=4).answer(timeout=60)
        assert answer.context.turns == 2  # the two turns asked before the kill came back
        # Time goes on past the archive: new frames come after the restored ones.
        later = wait(url, lambda i: i.memory_span is not None and i.memory_span[1] > after.memory_span[1], 30, "new")
        assert later.memory_span is not None
    with sqlite3.connect(data / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
def test_retention_holds_a_fast_two_hour_run(tmp_path: Path) -> None:
    """Two hours of the demo at 1 fps, read as fast as the model ingests, with 10 minutes and 200 kB kept."""
    data, log = tmp_path / "data", tmp_path / "serve.log"
    cap = 200_000
    with server(data, log, "--fast", "--retain", "10m", "--retain-bytes", str(cap)) as (proc, url):
        end = wait(url, lambda i: i.memory_span is not None and i.memory_span[1] >= 7200, 600, "two hours")
        assert end.archive is not None
        assert 0 < end.archive.bytes <= cap
        db = data / DB_NAME
        on_disk = sum(p.stat().st_size for p in data.iterdir() if p.name.startswith(DB_NAME))
        # The file holds at most the kept bytes plus SQLite's pages, indexes and WAL (16 MiB cap).
        assert on_disk <= cap + 17 * 2**20, on_disk
        with sqlite3.connect(db) as conn:
            span = conn.execute("SELECT MIN(start), MAX(end) FROM clips").fetchone()
        assert span[1] - span[0] < 7200  # the oldest were deleted
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_another_model_ignores_the_archive(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    with server(data, log, "--fast") as (proc, url):
        wait(url, lambda i: i.archive is not None and i.archive.clips >= 5, 60, "clips archived")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    with server(data, log, model="tiny-random-llava_onevision") as (_, url):
        info = wait(url, lambda i: i.frames >= 1, 60, "a frame")
        assert info.restored_frames == 0 and info.archive is not None and info.archive.clips < 5
    assert "ignored with model tiny-random-llava_onevision" in log.read_text()
