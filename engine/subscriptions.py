"""Who wants to hear about which stream: the fan-out behind ``subscribe`` and pushed stream events (status
changes, watches, alerts)."""

from __future__ import annotations

from engine.events import StatusListener, StreamEvent


class Subscriptions:
    """Listeners per stream name (event loop only). A subscription outlives the stream it names: a stream
    removed and added again under the same name (a publisher reconnecting) keeps its subscribers informed."""

    def __init__(self) -> None:
        self._by_stream: dict[str, list[StatusListener]] = {}
        self._everything: list[StatusListener] = []  # every stream's events (webhooks)

    def add(self, stream: str, listener: StatusListener) -> bool:
        """Subscribe; False if ``listener`` was already subscribed to ``stream``."""
        listeners = self._by_stream.setdefault(stream, [])
        if listener in listeners:
            return False
        listeners.append(listener)
        return True

    def remove(self, stream: str, listener: StatusListener) -> bool:
        listeners = self._by_stream.get(stream)
        if listeners is None or listener not in listeners:
            return False
        listeners.remove(listener)
        if not listeners:
            del self._by_stream[stream]
        return True

    def add_all(self, listener: StatusListener) -> None:
        """Hear every stream's events, streams added later included."""
        if listener not in self._everything:
            self._everything.append(listener)

    def remove_all(self, listener: StatusListener) -> None:
        if listener in self._everything:
            self._everything.remove(listener)

    def publish(self, event: StreamEvent) -> None:
        for listener in [*self._by_stream.get(event.stream, ()), *self._everything]:
            listener(event)

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_stream.values())
