"""Bounded conversation history for multi-turn questions."""

from __future__ import annotations

from collections import OrderedDict, deque

from models.adapter import Turn

#: Turns kept per conversation, and characters kept of each stored question and answer.
MAX_TURNS = 6
MAX_TURN_CHARS = 2000


class SessionStore:
    """The last ``max_turns`` turns of at most ``max_sessions`` conversations (least recently used
    conversations are forgotten first). Answers are cut to ``max_chars`` so one long answer cannot blow
    up every later prompt."""

    def __init__(
        self, *, max_sessions: int = 1024, max_turns: int = MAX_TURNS, max_chars: int = MAX_TURN_CHARS
    ) -> None:
        self._sessions: OrderedDict[tuple[str, str], deque[Turn]] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_turns = max_turns
        self._max_chars = max_chars

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
        history.append(Turn(turn.question[: self._max_chars], turn.answer[: self._max_chars]))

    def __len__(self) -> int:
        return len(self._sessions)
