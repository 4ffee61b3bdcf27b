"""engine/sessions.py: bounded conversation history per (stream, session)."""

from __future__ import annotations

from engine.sessions import SessionStore
from models.adapter import Turn


def test_turns_are_kept_per_stream_and_session_and_bounded() -> None:
    store = SessionStore(max_sessions=2, max_turns=3, max_chars=5)
    assert store.turns("cam", None) == ()
    store.record("cam", None, Turn("q", "a"))  # no session: nothing kept
    assert len(store) == 0
    for i in range(5):
        store.record("cam", "s1", Turn(f"q{i}", f"a{i}"))
    assert store.turns("cam", "s1") == (Turn("q2", "a2"), Turn("q3", "a3"), Turn("q4", "a4"))
    assert store.turns("door", "s1") == ()  # the same session id on another stream is another conversation
    store.record("cam", "s2", Turn("a question far too long", "an answer far too long"))
    assert store.turns("cam", "s2") == (Turn("a que", "an an"),)  # cut to max_chars


def test_the_least_recently_used_conversation_is_forgotten_first() -> None:
    store = SessionStore(max_sessions=2)
    store.record("cam", "old", Turn("q", "a"))
    store.record("cam", "mid", Turn("q", "a"))
    store.turns("cam", "old")  # reading counts as use
    store.record("cam", "new", Turn("q", "a"))
    assert len(store) == 2
    assert store.turns("cam", "mid") == ()
    assert store.turns("cam", "old") == (Turn("q", "a"),)
