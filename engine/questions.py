"""Waiting questions, served fairly across the connections that asked them.

Each owner (a websocket connection, or any other caller) has its own FIFO; the next question comes from
the next owner in round-robin order that has one waiting. So a question waits behind at most one
question of every other owner with questions waiting, plus the one being answered — however many
questions those owners keep queued. (Answers are not interrupted: the worst wait is bounded by the number
of owners waiting times the longest answer allowed, not by the queue's length.)

The queue holds at most ``capacity`` questions in all. When it is full, a question from an owner holding
fewer waiting questions than the heaviest owner pushes out the heaviest owner's newest question, which
is refused as ``busy`` (retryable): a polite client is never refused because others filled the queue.
Event loop only.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator
from typing import Generic, Protocol, TypeVar


class Owned(Protocol):
    @property
    def owner(self) -> Hashable: ...


Q = TypeVar("Q", bound=Owned)


class FairQueue(Generic[Q]):
    """Per-owner FIFOs served round robin, ``capacity`` items in all (see the module doc)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # Owners with something waiting, in service order: the first is served next, then moves to the end.
        self._owners: OrderedDict[Hashable, deque[Q]] = OrderedDict()
        self._size = 0

    def push(self, item: Q) -> Q | None:
        """Queue ``item``. Returns the item pushed out to make room (the caller refuses it), ``item``
        itself if it cannot be queued, or None. Never holds more than ``capacity``."""
        victim: Q | None = None
        if self._size >= self.capacity:
            heaviest = max(self._owners, key=lambda o: len(self._owners[o]))
            if len(self._owners[heaviest]) <= len(self._owners.get(item.owner, ())):
                return item  # the asker holds as many as anyone: it is the one to wait
            victim = self._owners[heaviest].pop()
            self._size -= 1
            if not self._owners[heaviest]:
                del self._owners[heaviest]
        queue = self._owners.get(item.owner)
        if queue is None:
            queue = self._owners[item.owner] = deque()
        queue.append(item)
        self._size += 1
        return victim

    def pop(self) -> Q:
        """The next question in round-robin order over owners; ``IndexError`` when empty."""
        if not self._owners:
            raise IndexError("pop from an empty FairQueue")
        owner, queue = next(iter(self._owners.items()))
        item = queue.popleft()
        self._size -= 1
        del self._owners[owner]
        if queue:
            self._owners[owner] = queue  # back of the line
        return item

    def remove(self, item: Q) -> bool:
        """Take ``item`` out if it is waiting; True if it was."""
        queue = self._owners.get(item.owner)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        self._size -= 1
        if not queue:
            del self._owners[item.owner]
        return True

    def waiting(self, owner: Hashable) -> int:
        return len(self._owners.get(owner, ()))

    def clear(self) -> list[Q]:
        """Empty the queue; returns what was waiting."""
        items = list(self)
        self._owners.clear()
        self._size = 0
        return items

    def __iter__(self) -> Iterator[Q]:
        for queue in self._owners.values():
            yield from queue

    def __contains__(self, item: object) -> bool:
        return any(item in q for q in self._owners.values())

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0
