"""The event store: watches committed before they are acknowledged, events with JPEG snapshots, updates,
full-text search, filters newest first, retention with the snapshots, a full queue counted, and files a
crash left without a row swept away."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import cv2
import numpy as np

from store.archive import Archive
from store.events import EventQuery, EventRecord, EventStore, WatchRecord, fts_query

NOW = time.time()


def record(store: EventStore, *, stream: str = "cam", at: float = NOW, condition: str | None = "the lights are off",
           kind: str = "alert", text: str | None = None, watch: int | None = 1) -> EventRecord:  # fmt: skip
    return EventRecord(store.new_id(), kind, stream, watch, condition, at, 30.0, None, None, 0.9, text, True)


def image(value: int) -> np.ndarray:
    return np.full((36, 64, 3), value, np.uint8)


def open_store(tmp_path: Path, now: list[float] | None = None, **kw: object) -> EventStore:
    clock = (lambda: now[0]) if now is not None else None
    store = EventStore(tmp_path, **({"clock": clock} if clock else {}), **kw)  # type: ignore[arg-type]
    store.start()
    return store


def flush(store: EventStore) -> None:
    store.add_watch(WatchRecord(0, "x", "flush", 5, 0, 0, 0.6, False, None, "api")).result(10)


def test_watches_are_committed_before_they_are_acknowledged_and_come_back(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    w = WatchRecord(0, "cam", "a person is at the door", 5.0, 0.0, 60.0, 0.6, True, "http://h/x", "api")
    first = store.add_watch(w).result(10)
    second = store.add_watch(WatchRecord(0, "yard", "a dog", 2.0, 1.0, 0.0, 0.7, False, None, "config")).result(10)
    assert second > first
    store.update_watch(WatchRecord(second, "yard", "a dog", 3.0, 1.0, 0.0, 0.7, False, None, "config")).result(10)
    store.remove_watch(first).result(10)
    store.close()
    again = open_store(tmp_path)
    with again.reader() as reader:
        assert reader.watches() == [WatchRecord(second, "yard", "a dog", 3.0, 1.0, 0.0, 0.7, False, None, "config")]
    # An id is never given twice, even after the newest is deleted.
    assert again.add_watch(w).result(10) > second
    again.close()


def test_events_with_snapshots_updates_search_and_filters(tmp_path: Path) -> None:
    Archive(tmp_path, model="m").start()  # the archive made the file first, as serve does
    store = open_store(tmp_path)
    dark = record(store, at=NOW)
    assert store.put_event(dark, image(30))
    lit = record(store, at=NOW + 60, condition="a person is at the door", watch=2)
    assert store.put_event(lit, image(200))
    caption = record(store, stream="yard", at=NOW + 100, kind="caption", condition=None, text="A dog crosses the lawn.",
                     watch=None)  # fmt: skip
    assert store.put_event(caption, None)
    assert store.update_event(dark.id, text="The room went dark.", ended=(NOW + 10, 40.0))
    flush(store)
    with store.reader() as r:
        assert [e.id for e in r.events(EventQuery())] == [caption.id, lit.id, dark.id]  # newest first
        got = r.event(dark.id)
        assert got is not None and got.text == "The room went dark." and got.ended_at == NOW + 10 and got.snapshot
        assert [e.id for e in r.events(EventQuery(text="light"))] == [dark.id]  # stemmed: lights
        assert [e.id for e in r.events(EventQuery(text="dark room"))] == [dark.id]  # the description, every word
        assert [e.id for e in r.events(EventQuery(text="dog"))] == [caption.id]
        assert r.events(EventQuery(text='"unbalanced AND (')) == []  # never a syntax error
        assert [e.id for e in r.events(EventQuery(streams=frozenset({"cam"}), limit=1))] == [lit.id]
        assert [e.id for e in r.events(EventQuery(watch=2))] == [lit.id]
        assert [e.id for e in r.events(EventQuery(kind="caption"))] == [caption.id]
        assert [e.id for e in r.events(EventQuery(since=NOW + 50, until=NOW + 70))] == [lit.id]
        assert r.events(EventQuery(streams=frozenset())) == []
        jpeg = r.snapshot(dark.id)
        assert jpeg is not None
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == (36, 64, 3) and abs(float(decoded.mean()) - 30) < 3
        assert r.snapshot(caption.id) is None
    store.close()


def test_fts_queries_quote_every_word() -> None:
    assert fts_query('lights "off') == '"lights" "off"'
    assert fts_query("  ?! ") is None


def test_retention_removes_old_events_and_their_snapshots(tmp_path: Path) -> None:
    now = [10_000.0]
    store = open_store(tmp_path, now, retain_s=100.0)
    old = record(store, at=9_950.0)
    new = record(store, at=10_040.0)
    store.put_event(old, image(10))
    store.put_event(new, image(10))
    flush(store)
    assert (tmp_path / "snapshots" / f"{old.id}.jpg").exists()
    now[0] += 61.0  # the writer retains at most once a minute
    store.put_event(record(store, at=now[0]), None)
    flush(store)
    with store.reader() as r:
        assert {e.id for e in r.events(EventQuery())} >= {new.id} and r.event(old.id) is None
    assert not (tmp_path / "snapshots" / f"{old.id}.jpg").exists()
    store.close()


def test_a_full_queue_drops_and_counts_and_files_without_a_row_are_swept(tmp_path: Path) -> None:
    store = EventStore(tmp_path, queue_size=2)  # not started: nothing drains the queue
    (tmp_path / "snapshots").mkdir()
    results = [store.put_event(record(store), None) for _ in range(4)]
    assert results == [True, True, False, False] and store.health()[0] == 2
    try:
        store.add_watch(WatchRecord(0, "cam", "x", 5, 0, 0, 0.6, False, None, "api"))
        raise AssertionError("a full queue refuses a watch at once")
    except queue.Full:
        pass
    (tmp_path / "snapshots" / "99.jpg").write_bytes(b"half")  # a crash between the file and its row
    (tmp_path / "snapshots" / "100.jpg.tmp").write_bytes(b"half")
    fresh = open_store(tmp_path)
    assert list((tmp_path / "snapshots").iterdir()) == []
    fresh.close()


def test_a_snapshot_asked_for_while_it_is_written_is_waited_for(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    ev = record(store)
    store.put_event(ev, image(50))
    store.wait_written(ev.id, 10.0)
    with store.reader() as r:
        assert r.snapshot(ev.id) is not None
    store.close()
