"""``livesight serve --model demo`` end to end, as the README's first command runs it: a real server process
on the demo scene at real pace, asked over the websocket at known moments of the scene's minute."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from livesight.client import SyncClient
from tests.support.process import TOKEN, server

#: (first, last) phase in the scene's minute to ask in (clear of the event's edges), question, expected.
ASKS = [
    ((22, 28), "Are the lights on?", "yes"),
    ((32, 38), "Are the lights on?", "no"),
    ((47, 53), "What does the banner say?", "PERSON AT DOOR"),
    ((57, 59), "What does the banner say?", "no banner"),
]


def newest(url: str) -> float:
    """The stream second of the newest frame in the demo stream's memory (-1 before the first)."""
    with SyncClient(url, TOKEN, reconnect=False) as c:
        (info,) = c.streams()
    return info.memory_span[1] if info.memory_span is not None else -1.0


@pytest.mark.slow
def test_the_demo_model_answers_what_the_scene_shows_at_real_pace(tmp_path: Path) -> None:
    """Each question is asked when the newest frame in memory is inside its phase window (so the answer is
    decided by what the scene shows then); the scene runs at real pace, so this takes about a minute."""
    with server(tmp_path / "data", tmp_path / "serve.log", model="demo") as (_, url):
        answers = []
        for (first, last), question, expected in ASKS:
            deadline = time.monotonic() + 75
            while not first <= newest(url) % 60 <= last:
                assert time.monotonic() < deadline, f"never reached phase {first}-{last}"
                time.sleep(0.2)
            with SyncClient(url, TOKEN, reconnect=False) as c:
                reply = c.ask("demo", question, max_new_tokens=16).answer(timeout=60)
            answers.append((question, expected, reply.text, (reply.context.end or 0.0) % 60))
        for question, expected, text, phase in answers:
            got = text.strip().lower()
            if expected in ("yes", "no"):
                assert got.startswith(expected), (question, phase, text)
            elif expected == "no banner":
                assert "person at door" not in got and "no banner" in got, (question, phase, text)
            else:
                assert expected.lower() in got, (question, phase, text)
