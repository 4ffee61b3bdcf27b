"""Bounded conversation history for multi-turn questions, kept in the archive when there is one."""

from __future__ import annotations

from collections import OrderedDict, deque

from models.adapter import Turn
from store.archive import Archive, ArchiveReader

#: Turns kept per conversation, and characters kept of each stored question and answer.
MAX_TURNS = 6
MAX_TURN_CHARS = 2000


class SessionStore:
    """The last ``max_turns`` turns of at most ``max_sessions`` conversations (least recently used
    conversations are forgotten first). Answers are cut to ``max_chars`` so one long answer cannot blow
    up every later prompt."""

    def __init__(
        self,
        *,
        max_sessions: int = 1024,
        max_turns: int = MAX_TURNS,
        max_chars: int = MAX_TURN_CHARS,
        archive: Archive | None = None,
    ) -> None:
        self._sessions: OrderedDict[tuple[str, str], deque[Turn]] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_turns = max_turns
        self._max_chars = max_chars
        self._archive = archive  # every recorded turn is written there too (its writer thread; never blocks)

    def load(self, reader: ArchiveReader) -> int:
        """Bring back the most recent conversations from the archive (after a restart); blocking, so call it
        off the event loop before serving. Returns how many."""
        pairs = reader.sessions(self._max_sessions)
        for stream, session in pairs:
            history = self._sessions[(stream, session)] = deque(maxlen=self._max_turns)
            history.extend(Turn(q, a) for q, a in reader.turns(stream, session, self._max_turns))
        return len(pairs)

    def turns(self, stream: str, session: str | None) -> tuple[Turn, ...]:
        if session is None:
            return ()
        key = (stream, session)
        history = self._sessions.get(key)
        if history is None:
            return ()
        self._sessions.move_to_end(key)
        return tuple(history)

    def record(self, stream: str, session: str | None, turn: Turn) -> None:
        if session is None:
            return
        key = (stream, session)
        history = self._sessions.get(key)
        if history is None:
            history = self._sessions[key] = deque(maxlen=self._max_turns)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        kept = Turn(turn.question[: self._max_chars], turn.answer[: self._max_chars])
        history.append(kept)
        if self._archive is not None:
            self._archive.put_turn(stream, session, kept.question, kept.answer)

    def __len__(self) -> int:
        return len(self._sessions)
