"""Who wants to hear about which stream: the fan-out behind ``subscribe`` and pushed status events."""

from __future__ import annotations

from engine.events import StatusListener, StreamStatus


class Subscriptions:
    """Listeners per stream name (event loop only). A subscription outlives the stream it names: a stream
    removed and added again under the same name (a publisher reconnecting) keeps its subscribers informed."""

    def __init__(self) -> None:
        self._by_stream: dict[str, list[StatusListener]] = {}

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

    def publish(self, event: StreamStatus) -> None:
        for listener in list(self._by_stream.get(event.stream, ())):
            listener(event)

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_stream.values())
