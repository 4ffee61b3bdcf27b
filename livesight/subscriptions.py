"""Who wants to hear about which stream: the fan-out behind ``subscribe`` and pushed ``status`` messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Delivers one protocol message to a subscriber; must not block (a client enqueues into its bounded outbox).
Deliver = Callable[[dict[str, Any]], None]


class Subscriptions:
    """Subscribers per stream name. A subscription outlives the stream it names: a stream removed and
    added again under the same name (a publisher reconnecting) keeps its subscribers informed."""

    def __init__(self) -> None:
        self._by_stream: dict[str, list[Deliver]] = {}

    def add(self, stream: str, deliver: Deliver) -> bool:
        """Subscribe; False if ``deliver`` was already subscribed to ``stream``."""
        subscribers = self._by_stream.setdefault(stream, [])
        if deliver in subscribers:
            return False
        subscribers.append(deliver)
        return True

    def remove(self, stream: str, deliver: Deliver) -> bool:
        subscribers = self._by_stream.get(stream)
        if subscribers is None or deliver not in subscribers:
            return False
        subscribers.remove(deliver)
        if not subscribers:
            del self._by_stream[stream]
        return True

    def publish(self, stream: str, msg: dict[str, Any]) -> None:
        for deliver in list(self._by_stream.get(stream, ())):
            deliver(msg)

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_stream.values())
