"""store/archive.py on a real SQLite file: clips and turns round-trip, retention by age and bytes, another
model's clips ignored, a full queue and a full disk counted, and a writer killed mid-write leaves only whole
records."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from memory.segment import Segment
from store.archive import DB_NAME, Archive


def clip(i: int, n: int = 16, d: int = 8, *, wall: bool = True) -> Segment:
    g = torch.Generator().manual_seed(i)
    start, end = 4.0 * i, 4.0 * i + 3
    return Segment(
        id=i,
        start=start,
        end=end,
        frames=4,
        tokens=torch.randn(n, d, generator=g),
        times=torch.linspace(start, end, n, dtype=torch.float64),
        sizes=torch.full((n,), 4, dtype=torch.int64),
        extras={"mrope": torch.arange(n * 3).reshape(n, 3)},
        tier=1,
        wall_start=1_000_000.0 + start if wall else None,
        wall_end=1_000_000.0 + end if wall else None,
    )


def wait_written(archive: Archive, stream: str, clips: int) -> None:
    reader = archive.reader()
    deadline = time.monotonic() + 20
    while reader.stats(stream)[0] < clips:
        assert time.monotonic() < deadline, reader.stats(stream)
        time.sleep(0.01)
    reader.close()


def test_clips_and_turns_round_trip(tmp_path: Path) -> None:
    archive = Archive(tmp_path, model="m1")
    archive.start()
    for i in range(5):
        assert archive.put_clip("cam", clip(i), keys=torch.full((2, 3), float(i)))
    archive.put_clip("file", clip(9, wall=False))
    archive.put_turn("cam", "s1", "Is it red?", "Yes.")
    archive.put_turn("cam", "s1", "And now?", "No.")
    archive.close()
    reader = archive.reader()
    infos = reader.clips("cam")
    assert [c.start for c in infos] == [0.0, 4.0, 8.0, 12.0, 16.0]
    back = reader.segment(infos[2], id=77)
    orig = clip(2)
    assert back.id == 77 and back.frames == 4 and back.tier == 1
    # float32 tokens are stored as float16 (half the disk), and come back in the dtype asked for.
    assert back.tokens.dtype == torch.float16 and torch.equal(back.tokens, orig.tokens.half())
    assert reader.segment(infos[2], id=0, dtype=torch.float32).tokens.dtype == torch.float32
    assert torch.equal(back.times, orig.times)
    assert torch.equal(back.extras["mrope"], orig.extras["mrope"]) and back.wall_start == orig.wall_start
    assert [k is not None and float(k[0, 0]) for k in reader.keys(infos)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [c.start for c in reader.clips("cam", wall=(1_000_005.0, 1_000_009.0))] == [4.0, 8.0]
    assert [c.start for c in reader.clips("cam", stream_time=(11.0, 12.5))] == [8.0, 12.0]
    assert [c.start for c in reader.clips("cam", newest=2)] == [12.0, 16.0]
    assert reader.clips("file")[0].wall_start is None
    count, size, start, end, wall_start, wall_end = reader.stats("cam")
    summary = archive.summary("cam")  # kept by the writer, read without the disk
    assert (summary.clips, summary.bytes, summary.start, summary.wall_end) == (5, size, 0.0, 1_000_019.0)
    assert (count, start, end, wall_start, wall_end) == (5, 0.0, 19.0, 1_000_000.0, 1_000_019.0) and size > 0
    assert reader.turns("cam", "s1", 6) == [("Is it red?", "Yes."), ("And now?", "No.")]
    assert reader.sessions(10) == [("cam", "s1")]


def test_retention_by_age_and_by_bytes(tmp_path: Path) -> None:
    now = [0.0]
    archive = Archive(tmp_path, model="m", retain_s=10.0, clock=lambda: now[0])
    archive.start()
    for i in range(10):
        now[0] = float(i * 2)
        archive.put_clip("cam", clip(i))
        archive.put_turn("cam", "s", f"q{i}", "a")
    archive.close()
    reader = archive.reader()
    kept = [c.start for c in reader.clips("cam")]
    assert kept == [4.0 * i for i in range(4, 10)]  # written at t >= 8 of 18, 10 s kept
    assert [q for q, _ in reader.turns("cam", "s", 100)] == [f"q{i}" for i in range(4, 10)]

    one = clip(0).tokens.numel() * 4
    capped = Archive(tmp_path / "b", model="m", retain_bytes=4 * one + 4000)
    capped.start()
    for i in range(12):
        capped.put_clip("cam", clip(i))
        capped.put_clip("door", clip(i))
    capped.close()
    reader = capped.reader()
    for stream in ("cam", "door"):
        count, size, *_ = reader.stats(stream)
        assert size <= 4 * one + 4000 and count >= 3  # per stream, the newest kept
        assert reader.clips(stream)[-1].start == 44.0


def test_another_models_clips_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Archive(tmp_path, model="smolvlm|64|576")
    first.start()
    first.put_clip("cam", clip(0))
    first.close()
    second = Archive(tmp_path, model="qwen|256|2048")
    second.start()
    second.close()
    assert "made with model smolvlm|64|576" in caplog.text and "ignored" in caplog.text
    assert second.reader().clips("cam") == []
    assert first.reader().clips("cam") != []  # still there for the model that made it


def test_a_full_queue_and_a_full_disk_are_counted_and_shown(tmp_path: Path) -> None:
    unstarted = Archive(tmp_path / "q", model="m", queue_size=2)
    assert unstarted.put_clip("cam", clip(0)) and unstarted.put_clip("cam", clip(1))
    assert not unstarted.put_clip("cam", clip(2))  # never blocks: dropped and counted
    assert unstarted.health("cam") == (1, None)

    class TinyDisk(Archive):
        def _open_writer(self) -> sqlite3.Connection:
            conn = super()._open_writer()
            conn.execute("PRAGMA max_page_count=40")  # a disk that fills up after a few clips
            return conn

    archive = TinyDisk(tmp_path / "d", model="m")
    archive.start()
    for i in range(40):
        archive.put_clip("cam", clip(i, n=256, d=64))
    archive.close()
    dropped, error = archive.health("cam")
    assert dropped > 0 and error is not None and "full" in error
    assert archive.reader().stats("cam")[0] > 0  # what fitted was kept


WRITER = """
import sys, time, torch
sys.path.insert(0, {root!r})
from store.archive import Archive
from tests.test_archive import clip
archive = Archive(__import__("pathlib").Path({path!r}), model="m", queue_size=64)
archive.start()
print("started", flush=True)
i = 0
while True:  # as fast as the writer takes them, never more than 64 waiting (bounded, whatever happens)
    if archive.put_clip("cam", clip(i, n=512, d=64)):
        i += 1
    else:
        time.sleep(0.001)
"""


def test_a_writer_killed_mid_write_leaves_only_whole_records(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER.format(root=root, path=str(tmp_path)))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        db = tmp_path / DB_NAME
        deadline = time.monotonic() + 60
        while not db.exists() or db.stat().st_size < 2_000_000:  # well into writing
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.05)
    finally:  # killed whatever happened: a writer left behind runs forever
        proc.kill()
        proc.wait()
    archive = Archive(tmp_path, model="m")
    reader = archive.reader()
    infos = reader.clips("cam")
    assert len(infos) > 3
    for info in infos:  # every record that is there is whole
        seg = reader.segment(info, id=0)
        assert torch.equal(seg.tokens, clip(int(info.start // 4), n=512, d=64).tokens.half())
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
