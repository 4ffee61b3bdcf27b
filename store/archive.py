"""The on-disk archive: every clip of every stream at clip detail, and every conversation, in SQLite (WAL).

One file, ``<data dir>/livesight.db``. Writes come from one writer thread fed by a bounded queue: the
inference thread hands a clip over with :meth:`Archive.put_clip`, which never blocks — when the queue is
full or the disk fails, the clip is dropped and counted, and the stream shows the error. Each write is one
transaction, so after a crash (kill -9 included) a record is either whole or absent: a half-written one is
never read. Retention runs continuously in the writer: clips and turns older than ``retain_s``, and a
stream's oldest clips beyond ``retain_bytes``, are deleted and their pages given back to the file system.

The archive remembers which model made its clips (``model``: a fingerprint of the model and its visual
token space); clips of another model are never read — a server started with a different model logs that
and ignores them until retention removes them.

Readers (:class:`ArchiveReader`) open their own connection per thread; WAL lets them read while the
writer writes.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from memory.segment import Segment

log = logging.getLogger("livesight.archive")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    model TEXT NOT NULL,
    start REAL NOT NULL,            -- stream seconds of the first and last frame
    end REAL NOT NULL,
    wall_start REAL,                -- wall-clock seconds since the epoch (None for files)
    wall_end REAL,
    frames INTEGER NOT NULL,
    at REAL NOT NULL,               -- when it was recorded (retention by age)
    bytes INTEGER NOT NULL,
    tensors BLOB NOT NULL,          -- safetensors: tokens, times, sizes, extra.<name>
    keys BLOB                       -- safetensors: recall keys, or NULL
);
CREATE INDEX IF NOT EXISTS clips_by_stream_time ON clips (stream, model, end);
CREATE INDEX IF NOT EXISTS clips_by_stream_wall ON clips (stream, model, wall_end);
CREATE INDEX IF NOT EXISTS clips_by_age ON clips (at);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    session TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (stream, session, id);
CREATE INDEX IF NOT EXISTS turns_by_age ON turns (at);
"""
#: Clips, turns and other writes waiting for the writer; beyond it writes are dropped and counted.
QUEUE = 256
DB_NAME = "livesight.db"


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode (readers and the writer do not block each other) that waits for locks."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
    conn.execute("PRAGMA journal_size_limit=16777216")  # the WAL is truncated back to 16 MiB after checkpoints
    return conn


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """An archived clip without its tensors."""

    id: int
    stream: str
    start: float
    end: float
    wall_start: float | None
    wall_end: float | None
    frames: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    """What the archive holds for one stream (this model's clips), and how its writes fare."""

    clips: int
    bytes: int
    start: float | None  # stream seconds, oldest clip to newest
    end: float | None
    wall_start: float | None  # wall clock, when the stream has one
    wall_end: float | None
    dropped: int  # clips and turns not archived (queue full, disk failing)
    error: str | None  # the last write failure; None once writes succeed again


def encode_segment(segment: Segment) -> bytes:
    """A segment's tensors as safetensors bytes (CPU, contiguous). float32 tokens are kept as float16: half
    the disk, and a clip that comes back is re-merged or shown once more, never compared bit for bit."""
    tokens = segment.tokens.half() if segment.tokens.dtype == torch.float32 else segment.tokens
    tensors = {"tokens": tokens, "times": segment.times, "sizes": segment.sizes}
    tensors |= {f"extra.{k}": v for k, v in segment.extras.items()}
    return save_tensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def decode_segment(info: ClipInfo, data: bytes, *, id: int, tier: int = 1, dtype: torch.dtype | None = None) -> Segment:
    t = load_tensors(data)
    if dtype is not None:
        t["tokens"] = t["tokens"].to(dtype)
    extras = {k.removeprefix("extra."): v for k, v in t.items() if k.startswith("extra.")}
    return Segment(
        id=id,
        start=info.start,
        end=info.end,
        frames=info.frames,
        tokens=t["tokens"],
        times=t["times"],
        sizes=t["sizes"],
        extras=extras,
        tier=tier,
        wall_start=info.wall_start,
        wall_end=info.wall_end,
    )


class Archive:
    """The writer side (see the module doc). ``start()`` opens the file and the writer thread; ``close()``
    writes what is queued and stops it."""

    def __init__(
        self,
        directory: Path,
        *,
        model: str,
        retain_s: float | None = 24 * 3600.0,
        retain_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        queue_size: int = QUEUE,
    ) -> None:
        self.path = Path(directory) / DB_NAME
        self.model = model
        self.retain_s = retain_s
        self.retain_bytes = retain_bytes
        self._clock = clock
        self._queue: queue.Queue[tuple[str, tuple[object, ...]] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._bytes: dict[str, int] = {}  # writer thread only: live bytes per stream
        self._dropped: dict[str, int] = {}
        self._errors: dict[str, str | None] = {}
        self._lock = threading.Lock()  # guards _dropped and _errors, written from two threads
        #: per stream, what the archive holds: replaced whole by the writer, read by anyone
        self._summaries: dict[str, tuple[int, int, float | None, float | None, float | None, float | None]] = {}

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Open (creating) the database and start the writer. Raises ``sqlite3.Error``/``OSError`` when the
        directory cannot hold it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        # Set before the first table is created; on an existing file it stays as it was made.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.executescript(SCHEMA)
        old = conn.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        if old is not None and old[0] != self.model:
            n = conn.execute("SELECT COUNT(*) FROM clips WHERE model != ?", (self.model,)).fetchone()[0]
            log.warning(
                "archive %s was made with model %s; its %d clip(s) are ignored with model %s (retention removes them)",
                self.path,
                old[0],
                n,
                self.model,
            )
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('model', ?)", (self.model,))
        self._bytes = self._recount(conn)
        for (stream,) in conn.execute("SELECT DISTINCT stream FROM clips"):
            self._summaries[stream] = self._summary_row(conn, stream)
        conn.close()
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()

    def _open_writer(self) -> sqlite3.Connection:
        return connect(self.path)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the writer (blocking; call it off the event loop)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    # --- writing (any thread; never blocks) --------------------------------------------------------
    def put_clip(self, stream: str, segment: Segment, keys: torch.Tensor | None = None) -> bool:
        """Hand a clip-level segment over for archiving; False (counted) if it had to be dropped."""
        return self._put("clip", (stream, segment, keys, self._clock()), stream)

    def put_turn(self, stream: str, session: str, question: str, answer: str) -> bool:
        return self._put("turn", (stream, session, question, answer, self._clock()), stream)

    def adopt(self, stream: str) -> None:
        """Count ``stream``'s clips afresh (writer thread, in turn): another process sharing the file (a
        shard of ``serve --ray``) may have written them until now. Never blocks; skipped when the queue is
        full (the next write of the stream counts it anyway)."""
        self._put("adopt", (stream,), stream)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before this call is written (blocking; off the event loop). False
        if that took longer than ``timeout`` seconds or the writer is not running."""
        if self._thread is None:
            return False
        done = threading.Event()
        try:
            self._queue.put(("flush", (done,)), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _put(self, kind: str, item: tuple[object, ...], stream: str) -> bool:
        try:
            self._queue.put_nowait((kind, item))
            return True
        except queue.Full:
            with self._lock:
                self._dropped[stream] = self._dropped.get(stream, 0) + 1
            return False

    # --- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        conn = self._open_writer()  # SQLite connections belong to the thread that opened them
        try:
            while (item := self._queue.get()) is not None:
                kind, args = item
                if kind == "flush":
                    args[0].set()  # type: ignore[attr-defined]
                elif kind == "adopt":
                    self._adopt(conn, str(args[0]))
                else:
                    self._write(conn, kind, args)
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, kind: str, item: tuple[object, ...]) -> None:
        """One record in one transaction (with WAL and synchronous=NORMAL a commit costs no fsync), so a
        failure loses only that record."""
        stream = str(item[0])
        try:
            conn.execute("BEGIN IMMEDIATE")
            if kind == "clip":
                self._insert_clip(conn, *item)  # type: ignore[arg-type]
            else:
                conn.execute("INSERT INTO turns (stream, session, question, answer, at) VALUES (?, ?, ?, ?, ?)", item)
            self._retain(conn)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            # The disk is full or failing: this record is lost (counted) and the stream says why; the next
            # one tries again.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._bytes = self._recount(conn)
            why = f"archive write failed: {exc}"
            with self._lock:
                first = self._errors.get(stream) is None
                self._dropped[stream] = self._dropped.get(stream, 0) + 1
                self._errors[stream] = why
            if first:  # once per spell of failures, not once per record
                log.error("stream %s: %s", stream, why)
            return
        with self._lock:
            self._errors[stream] = None
        for name in {stream} | set(self._bytes):  # retention may have trimmed any stream
            self._summaries[name] = self._summary_row(conn, name)
        conn.execute("PRAGMA incremental_vacuum")  # give freed pages back to the file system

    def _adopt(self, conn: sqlite3.Connection, stream: str) -> None:
        try:
            (size,) = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM clips WHERE stream = ?", (stream,)).fetchone()
            self._bytes[stream] = int(size)
            self._summaries[stream] = self._summary_row(conn, stream)
        except sqlite3.Error as exc:  # counted again at the stream's next write
            log.warning("stream %s: could not count its archived clips: %s", stream, exc)

    def _insert_clip(
        self, conn: sqlite3.Connection, stream: str, seg: Segment, keys: torch.Tensor | None, at: float
    ) -> None:
        data = encode_segment(seg)
        key_data = None if keys is None else save_tensors({"keys": keys.detach().to("cpu").contiguous()})
        size = len(data) + (len(key_data) if key_data else 0)
        conn.execute(
            "INSERT INTO clips (stream, model, start, end, wall_start, wall_end, frames, at, bytes, tensors, keys)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stream,
                self.model,
                seg.start,
                seg.end,
                seg.wall_start,
                seg.wall_end,
                seg.frames,
                at,
                size,
                data,
                key_data,
            ),
        )
        self._bytes[stream] = self._bytes.get(stream, 0) + size

    def _retain(self, conn: sqlite3.Connection) -> None:
        if self.retain_s is not None:
            horizon = self._clock() - self.retain_s
            cur = conn.execute("DELETE FROM clips WHERE at < ? RETURNING stream, bytes", (horizon,))
            for stream, size in cur.fetchall():
                self._bytes[stream] -= int(size)
            conn.execute("DELETE FROM turns WHERE at < ?", (horizon,))
        if self.retain_bytes is not None:
            for stream, total in list(self._bytes.items()):
                if total <= self.retain_bytes:
                    continue
                rows = conn.execute("SELECT id, bytes FROM clips WHERE stream = ? ORDER BY id", (stream,)).fetchall()
                doomed = []
                for row_id, size in rows:
                    if total <= self.retain_bytes:
                        break
                    doomed.append((row_id,))
                    total -= int(size)
                conn.executemany("DELETE FROM clips WHERE id = ?", doomed)
                self._bytes[stream] = total

    def _summary_row(
        self, conn: sqlite3.Connection, stream: str
    ) -> tuple[int, int, float | None, float | None, float | None, float | None]:
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(start), MAX(end), MIN(wall_start), MAX(wall_end)"
            " FROM clips WHERE stream = ? AND model = ?",
            (stream, self.model),
        ).fetchone()
        return int(row[0]), int(row[1]), row[2], row[3], row[4], row[5]

    @staticmethod
    def _recount(conn: sqlite3.Connection) -> dict[str, int]:
        return {s: int(n) for s, n in conn.execute("SELECT stream, SUM(bytes) FROM clips GROUP BY stream")}

    # --- status ------------------------------------------------------------------------------------
    def health(self, stream: str) -> tuple[int, str | None]:
        """``(dropped, last error)`` of a stream's archive writes (any thread)."""
        with self._lock:
            return self._dropped.get(stream, 0), self._errors.get(stream)

    def summary(self, stream: str) -> ArchiveSummary:
        """What the archive holds for ``stream`` as of the last write (any thread; no disk access)."""
        clips, size, start, end, wall_start, wall_end = self._summaries.get(stream, (0, 0, None, None, None, None))
        dropped, error = self.health(stream)
        return ArchiveSummary(clips, size, start, end, wall_start, wall_end, dropped, error)

    def reader(self) -> ArchiveReader:
        """A reader with its own connection, for the calling thread."""
        return ArchiveReader(self.path, self.model)


class ArchiveReader:
    """Reads the archive from one thread (its own connection; see the module doc)."""

    def __init__(self, path: Path, model: str) -> None:
        self.model = model
        self._conn = connect(path)

    def close(self) -> None:
        self._conn.close()

    def clips(
        self,
        stream: str,
        *,
        wall: tuple[float, float] | None = None,
        stream_time: tuple[float, float] | None = None,
        newest: int | None = None,
    ) -> list[ClipInfo]:
        """Clips of ``stream`` (oldest first) overlapping a wall-clock or stream-time window, or the
        ``newest`` N."""
        sql = (
            "SELECT id, stream, start, end, wall_start, wall_end, frames, bytes FROM clips"
            " WHERE stream = ? AND model = ?"
        )
        args: list[object] = [stream, self.model]
        if wall is not None:
            sql += " AND wall_end >= ? AND wall_start <= ?"
            args += [wall[0], wall[1]]
        if stream_time is not None:
            sql += " AND end >= ? AND start <= ?"
            args += [stream_time[0], stream_time[1]]
        if newest is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
            args.append(newest)
        else:
            sql += " ORDER BY id"
        return [ClipInfo(*row) for row in self._conn.execute(sql, args)]

    def segment(self, info: ClipInfo, *, id: int, dtype: torch.dtype | None = None) -> Segment:
        """The clip's tokens as a segment with the given ``id`` (memory ids are per memory), its tokens in
        ``dtype`` (as stored if None). ``KeyError`` if retention removed it meanwhile."""
        row = self._conn.execute("SELECT tensors FROM clips WHERE id = ?", (info.id,)).fetchone()
        if row is None:
            raise KeyError(info.id)
        return decode_segment(info, row[0], id=id, dtype=dtype)

    def keys(self, infos: Sequence[ClipInfo]) -> list[torch.Tensor | None]:
        """The recall keys stored with each clip (None where none were)."""
        out: list[torch.Tensor | None] = []
        for info in infos:
            row = self._conn.execute("SELECT keys FROM clips WHERE id = ?", (info.id,)).fetchone()
            out.append(None if row is None or row[0] is None else load_tensors(row[0])["keys"])
        return out

    def stats(self, stream: str) -> tuple[int, int, float | None, float | None, float | None, float | None]:
        """``(clips, bytes, start, end, wall_start, wall_end)`` of a stream's archive (this model's clips)."""
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(start), MAX(end), MIN(wall_start), MAX(wall_end)"
            " FROM clips WHERE stream = ? AND model = ?",
            (stream, self.model),
        ).fetchone()
        return int(row[0]), int(row[1]), row[2], row[3], row[4], row[5]

    def turns(self, stream: str, session: str, limit: int) -> list[tuple[str, str]]:
        """The last ``limit`` turns of a conversation, oldest first: ``(question, answer)``."""
        rows = self._conn.execute(
            "SELECT question, answer FROM (SELECT id, question, answer FROM turns WHERE stream = ? AND session = ?"
            " ORDER BY id DESC LIMIT ?) ORDER BY id",
            (stream, session, limit),
        ).fetchall()
        return [(str(q), str(a)) for q, a in rows]

    def sessions(self, limit: int) -> list[tuple[str, str]]:
        """The most recently used conversations, ``(stream, session)``, most recent last."""
        rows = self._conn.execute(
            "SELECT stream, session FROM turns GROUP BY stream, session ORDER BY MAX(id) DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(str(s), str(n)) for s, n in reversed(rows)]
