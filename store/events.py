"""The timeline on disk: watches, their alerts and the streams' captions, in the archive's SQLite file
(``<data dir>/livesight.db``, WAL), with a JPEG snapshot per event under ``<data dir>/snapshots/``.

Writes come from one writer thread fed by a bounded queue (:data:`QUEUE`): :meth:`EventStore.put_event`
and :meth:`EventStore.update_event` never block — when the queue is full the write is dropped and counted
(``dropped``, with the last failure in ``error``). A snapshot is encoded and written by that thread too
(to a temporary name, then renamed), before its row is committed, so a row never names a file that is not
whole; after a crash (kill -9 included) a record is either whole or absent, and snapshot files without a
row are swept away at the next start. Watch changes go through the same thread and return a future that
settles once committed: a watch acknowledged to a client survives a crash.

Event ids are given out in this process (:meth:`EventStore.new_id`) so an alert can name its snapshot's URL
before the write; ids are never reused (``AUTOINCREMENT``). Retention (``retain_s``, the archive's
``--retain``) deletes old events and their snapshots in the writer. ``text`` search is SQLite FTS5 over
the condition and the description or caption (porter stemming: "light" finds "lights").

Readers (:meth:`EventStore.reader`) open their own connection, per thread.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from store.archive import DB_NAME, connect

log = logging.getLogger("livesight.events")

SCHEMA = """
CREATE TABLE IF NOT EXISTS watches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    condition TEXT NOT NULL,
    every_s REAL NOT NULL,
    min_duration_s REAL NOT NULL,
    cooldown_s REAL NOT NULL,
    threshold REAL NOT NULL,
    describe INTEGER NOT NULL,
    webhook TEXT,
    origin TEXT NOT NULL,           -- 'config' (the configuration file) or 'api' (added at run time)
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,             -- 'alert' or 'caption'
    stream TEXT NOT NULL,
    watch INTEGER,                  -- the watch that fired (no foreign key: events outlive their watch)
    condition TEXT,
    at REAL NOT NULL,               -- wall clock (seconds since the epoch) it started
    stream_time REAL,
    ended_at REAL,
    ended_stream_time REAL,
    score REAL,
    text TEXT,                      -- the description or the caption
    snapshot INTEGER NOT NULL       -- 1: snapshots/<id>.jpg exists
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
CREATE INDEX IF NOT EXISTS events_by_stream ON events (stream, at);
CREATE INDEX IF NOT EXISTS events_by_watch ON events (watch, at);
CREATE VIRTUAL TABLE IF NOT EXISTS events_text USING fts5(
    condition, text, content='events', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS events_text_insert AFTER INSERT ON events BEGIN
    INSERT INTO events_text (rowid, condition, text) VALUES (new.id, new.condition, new.text);
END;
CREATE TRIGGER IF NOT EXISTS events_text_delete AFTER DELETE ON events BEGIN
    INSERT INTO events_text (events_text, rowid, condition, text) VALUES ('delete', old.id, old.condition, old.text);
END;
CREATE TRIGGER IF NOT EXISTS events_text_update AFTER UPDATE OF condition, text ON events BEGIN
    INSERT INTO events_text (events_text, rowid, condition, text) VALUES ('delete', old.id, old.condition, old.text);
    INSERT INTO events_text (rowid, condition, text) VALUES (new.id, new.condition, new.text);
END;
"""
#: Writes waiting for the writer; beyond it events are dropped (counted) and watch changes refused.
QUEUE = 256
SNAPSHOTS = "snapshots"
JPEG_QUALITY = 85
#: How long the writer sleeps between retention passes when nothing is written.
RETAIN_EVERY_S = 60.0
_EVENT_COLUMNS = (
    "id, kind, stream, watch, condition, at, stream_time, ended_at, ended_stream_time, score, text, snapshot"
)


@dataclass(frozen=True, slots=True)
class WatchRecord:
    """A stored watch (``id`` 0 before it is stored)."""

    id: int
    stream: str
    condition: str
    every_s: float
    min_duration_s: float
    cooldown_s: float
    threshold: float
    describe: bool
    webhook: str | None
    origin: str


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event; times are wall clock (seconds since the epoch) and stream seconds."""

    id: int
    kind: str
    stream: str
    watch: int | None
    condition: str | None
    at: float
    stream_time: float | None
    ended_at: float | None
    ended_stream_time: float | None
    score: float | None
    text: str | None
    snapshot: bool


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events to list, newest first."""

    streams: frozenset[str] | None = None  # only these streams (None: every stream)
    watch: int | None = None
    kind: str | None = None
    since: float | None = None  # wall clock, seconds since the epoch
    until: float | None = None
    text: str | None = None  # full-text search over conditions, descriptions and captions
    limit: int = 50


def fts_query(text: str) -> str | None:
    """``text`` as an FTS5 query that cannot be malformed: each word quoted, all of them required (None when
    it has no word)."""
    words = re.findall(r"\w+", text)
    return " ".join('"' + w.replace('"', '""') + '"' for w in words) or None


class EventStore:
    """The writer side (see the module doc). ``start()`` opens the file and the writer thread; ``close()``
    writes what is queued and stops it."""

    def __init__(
        self,
        directory: Path,
        *,
        retain_s: float | None = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        queue_size: int = QUEUE,
    ) -> None:
        self.path = Path(directory) / DB_NAME
        self.snapshots = Path(directory) / SNAPSHOTS
        self.retain_s = retain_s
        self._clock = clock
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Condition()  # guards the ids, the pending set and the health counters
        self._next_id = 1
        self._pending: set[int] = set()  # events queued, not yet committed (their snapshot may be asked for)
        self.dropped = 0
        self.error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Open (creating) the tables and start the writer. Raises ``sqlite3.Error``/``OSError``."""
        self.snapshots.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            top = conn.execute("SELECT MAX(id) FROM events").fetchone()[0]
            self._next_id = max(int(row[0]) if row else 0, int(top or 0)) + 1
            self._sweep(conn)
        finally:
            conn.close()
        self._thread = threading.Thread(target=self._run, name="events-writer", daemon=True)
        self._thread.start()

    def _sweep(self, conn: sqlite3.Connection) -> None:
        """Snapshot files without a committed row (a crash between the file and the row) are removed."""
        kept = {int(i) for (i,) in conn.execute("SELECT id FROM events WHERE snapshot = 1")}
        for path in self.snapshots.iterdir():
            stem = path.name.split(".")[0]
            if not stem.isdigit() or int(stem) not in kept or not path.name.endswith(".jpg"):
                path.unlink(missing_ok=True)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the writer (blocking; call it off the event loop)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    # --- writing (any thread; never blocks) --------------------------------------------------------
    def new_id(self) -> int:
        with self._lock:
            n = self._next_id
            self._next_id += 1
            return n

    def put_event(self, record: EventRecord, image: np.ndarray | None = None) -> bool:
        """Store an event (``record.id`` from :meth:`new_id`) with a snapshot of ``image`` (``[H, W, 3]``
        uint8 RGB); False (counted) if it had to be dropped."""
        with self._lock:
            self._pending.add(record.id)
        if self._put("event", (record, image)):
            return True
        with self._lock:
            self._pending.discard(record.id)
            self._lock.notify_all()
        return False

    def update_event(
        self, event: int, *, text: str | None = None, ended: tuple[float, float | None] | None = None
    ) -> bool:
        """Set an event's description (``text``) or when it ended (``(wall clock, stream time)``)."""
        return self._put("update", (event, text, ended))

    def add_watch(self, record: WatchRecord) -> Future[int]:
        """Store a new watch; the future gives its id once committed (``queue.Full`` if the writer is
        swamped, raised at once)."""
        return self._submit("watch_add", record)

    def update_watch(self, record: WatchRecord) -> Future[int]:
        return self._submit("watch_update", record)

    def remove_watch(self, watch: int) -> Future[int]:
        return self._submit("watch_remove", watch)

    def _submit(self, kind: str, item: object) -> Future[int]:
        done: Future[int] = Future()
        self._queue.put_nowait((kind, (item, done)))
        return done

    def _put(self, kind: str, item: tuple[Any, ...]) -> bool:
        try:
            self._queue.put_nowait((kind, item))
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False

    # --- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        conn = connect(self.path)  # SQLite connections belong to the thread that opened them
        last_retained = 0.0
        try:
            while True:
                try:
                    item = self._queue.get(timeout=RETAIN_EVERY_S)
                except queue.Empty:
                    item = ("retain", ())
                if item is None:
                    return
                self._write(conn, *item)
                if self._clock() - last_retained >= RETAIN_EVERY_S:
                    last_retained = self._clock()
                    self._write(conn, "retain", ())
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, kind: str, item: tuple[Any, ...]) -> None:
        done: Future[int] | None = item[1] if kind.startswith("watch_") else None
        if done is not None and not done.set_running_or_notify_cancel():
            return
        event = item[0].id if kind == "event" else None
        doomed: list[int] = []
        try:
            if kind == "event":
                result = self._insert_event(conn, item[0], item[1])
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = self._apply(conn, kind, item, doomed)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError, ValueError) as exc:
            why = f"event store write failed: {exc}"
            with self._lock:
                first = self.error is None
                self.error = why
                if done is None:
                    self.dropped += 1
            if first:
                log.error("%s", why)
            if done is not None:
                done.set_exception(exc)
            return
        finally:
            if event is not None:
                with self._lock:
                    self._pending.discard(event)
                    self._lock.notify_all()
        with self._lock:
            self.error = None
        for n in doomed:  # after the commit: a crash before it leaves files the next start sweeps
            (self.snapshots / f"{n}.jpg").unlink(missing_ok=True)
        if done is not None:
            done.set_result(result)

    def _insert_event(self, conn: sqlite3.Connection, rec: EventRecord, image: np.ndarray | None) -> int:
        snapshot = False
        if image is not None:
            bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                tmp = self.snapshots / f"{rec.id}.jpg.tmp"
                tmp.write_bytes(data.tobytes())
                os.replace(tmp, self.snapshots / f"{rec.id}.jpg")
                snapshot = True
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.kind,
                    rec.stream,
                    rec.watch,
                    rec.condition,
                    rec.at,
                    rec.stream_time,
                    rec.ended_at,
                    rec.ended_stream_time,
                    rec.score,
                    rec.text,
                    int(snapshot),
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if snapshot:
                (self.snapshots / f"{rec.id}.jpg").unlink(missing_ok=True)
            raise
        return rec.id

    def _apply(self, conn: sqlite3.Connection, kind: str, item: tuple[Any, ...], doomed: list[int]) -> int:
        if kind == "update":
            event, text, ended = item
            if text is not None:
                conn.execute("UPDATE events SET text = ? WHERE id = ?", (text, event))
            if ended is not None:
                conn.execute(
                    "UPDATE events SET ended_at = ?, ended_stream_time = ? WHERE id = ?", (ended[0], ended[1], event)
                )
            return int(event)
        if kind == "retain":
            if self.retain_s is not None:
                rows = conn.execute(
                    "DELETE FROM events WHERE at < ? RETURNING id, snapshot", (self._clock() - self.retain_s,)
                ).fetchall()
                doomed.extend(int(i) for i, snap in rows if snap)
            return 0
        if kind == "watch_remove":
            conn.execute("DELETE FROM watches WHERE id = ?", (item[0],))
            return int(item[0])
        rec: WatchRecord = item[0]
        values = (
            rec.stream,
            rec.condition,
            rec.every_s,
            rec.min_duration_s,
            rec.cooldown_s,
            rec.threshold,
            int(rec.describe),
            rec.webhook,
            rec.origin,
        )
        if kind == "watch_add":
            cur = conn.execute(
                "INSERT INTO watches (stream, condition, every_s, min_duration_s, cooldown_s, threshold, describe,"
                " webhook, origin, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, self._clock()),
            )
            return int(cur.lastrowid or 0)
        conn.execute(
            "UPDATE watches SET stream = ?, condition = ?, every_s = ?, min_duration_s = ?, cooldown_s = ?,"
            " threshold = ?, describe = ?, webhook = ?, origin = ? WHERE id = ?",
            (*values, rec.id),
        )
        return rec.id

    # --- reading -----------------------------------------------------------------------------------
    def reader(self) -> EventReader:
        """A reader with its own connection, for the calling thread."""
        return EventReader(self)

    def wait_written(self, event: int, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until event ``event`` is no longer waiting to be written."""
        with self._lock:
            self._lock.wait_for(lambda: event not in self._pending, timeout)

    def health(self) -> tuple[int, str | None]:
        """``(dropped, last error)`` of the writes (any thread)."""
        with self._lock:
            return self.dropped, self.error


class EventReader:
    """Reads the timeline from one thread (its own connection)."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._conn = connect(store.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def watches(self) -> list[WatchRecord]:
        rows = self._conn.execute(
            "SELECT id, stream, condition, every_s, min_duration_s, cooldown_s, threshold, describe, webhook, origin"
            " FROM watches ORDER BY id"
        ).fetchall()
        return [WatchRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9]) for r in rows]

    def last_alerts(self) -> dict[int, float]:
        """The stream time of each watch's newest alert (where it has one): cooldowns outlive a restart."""
        rows = self._conn.execute(
            "SELECT watch, stream_time FROM events WHERE id IN"
            " (SELECT MAX(id) FROM events WHERE kind = 'alert' AND watch IS NOT NULL GROUP BY watch)"
        ).fetchall()
        return {int(w): float(t) for w, t in rows if t is not None}

    def events(self, q: EventQuery) -> list[EventRecord]:
        """Events matching ``q``, newest first."""
        cols = ", ".join(f"e.{c.strip()}" for c in _EVENT_COLUMNS.split(","))
        sql = f"SELECT {cols} FROM events e"
        where: list[str] = []
        args: list[object] = []
        if q.text is not None:
            match = fts_query(q.text)
            if match is None:
                return []
            sql += " JOIN events_text t ON t.rowid = e.id"
            where.append("events_text MATCH ?")
            args.append(match)
        if q.streams is not None:
            if not q.streams:
                return []
            where.append(f"e.stream IN ({', '.join('?' * len(q.streams))})")
            args.extend(sorted(q.streams))
        for column, op, value in (
            ("e.watch", "=", q.watch),
            ("e.kind", "=", q.kind),
            ("e.at", ">=", q.since),
            ("e.at", "<=", q.until),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.at DESC, e.id DESC LIMIT ?"
        args.append(q.limit)
        return [_event(row) for row in self._conn.execute(sql, args)]

    def event(self, event: int) -> EventRecord | None:
        row = self._conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?", (event,)).fetchone()
        return None if row is None else _event(row)

    def snapshot(self, event: int) -> bytes | None:
        """The JPEG of event ``event``, or None if it has none (or retention removed it)."""
        try:
            return (self._store.snapshots / f"{event}.jpg").read_bytes()
        except FileNotFoundError:
            return None


def _event(r: tuple[Any, ...]) -> EventRecord:
    return EventRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], bool(r[11]))
