"""Waiting questions, served fairly across the clients and the connections that asked them.

Each owner (a websocket connection, or any other caller) has its own FIFO, and owners belong to a group
(the client's address). The next question comes from the next group in round-robin order that has one
waiting, and within it from that group's next owner in turn. So a question waits behind at most one
question of every other group with questions waiting (and, within its own group, one of every other
owner) — however many questions those keep queued, and however many connections one address opens.
(Answers are not interrupted: the worst wait is bounded by the number of groups and owners waiting times
the longest answer allowed, not by the queue's length.) Without groups (all None) it is round robin over
owners.

The queue holds at most ``capacity`` questions in all. When it is full, a question from a group holding
fewer waiting questions than the heaviest group pushes out that group's heaviest owner's newest
question; within one group, an owner holding fewer than the group's heaviest owner does the same. The
pushed-out question is refused as ``busy`` (retryable): a polite client is never refused because others
filled the queue. Event loop only.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar


class Owned(Protocol):
    @property
    def owner(self) -> Hashable: ...

    @property
    def group(self) -> Hashable: ...


Q = TypeVar("Q", bound=Owned)

_NONE = object()  # no group found (None is a group)


class FairQueue(Generic[Q]):
    """Per-owner FIFOs within per-group rounds, served round robin, ``capacity`` items in all (see the
    module doc)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # Groups with something waiting, in service order (the first is served next, then moves to the
        # end); in each, its owners with something waiting, in the same kind of order.
        self._groups: OrderedDict[Hashable, OrderedDict[Hashable, deque[Q]]] = OrderedDict()
        self._size = 0

    def _group_size(self, group: Hashable) -> int:
        owners = self._groups.get(group)
        return 0 if owners is None else sum(len(q) for q in owners.values())

    def push(self, item: Q) -> Q | None:
        """Queue ``item``. Returns the item pushed out to make room (the caller refuses it), ``item``
        itself if it cannot be queued, or None. Never holds more than ``capacity``."""
        victim: Q | None = None
        if self._size >= self.capacity:
            heavy = max(self._groups, key=self._group_size)
            own = item.group
            if heavy != own and self._group_size(heavy) > self._group_size(own):
                owners = self._groups[heavy]
                heaviest = max(owners, key=lambda o: len(owners[o]))
            else:  # its group is as heavy as any: the contest is within the group
                owners = self._groups.get(own, OrderedDict())
                if not owners:
                    return item
                heaviest = max(owners, key=lambda o: len(owners[o]))
                if len(owners[heaviest]) <= len(owners.get(item.owner, ())):
                    return item  # the asker holds as many as anyone in its group: it is the one to wait
            victim = owners[heaviest].pop()
            self._size -= 1
            self._forget_if_empty(victim.group, heaviest)
        into = self._groups.get(item.group)
        if into is None:
            into = self._groups[item.group] = OrderedDict()
        queue = into.get(item.owner)
        if queue is None:
            queue = into[item.owner] = deque()
        queue.append(item)
        self._size += 1
        return victim

    def _forget_if_empty(self, group: Hashable, owner: Hashable) -> None:
        owners = self._groups[group]
        if not owners[owner]:
            del owners[owner]
        if not owners:
            del self._groups[group]

    def has_group(self, where: Callable[[Hashable], bool]) -> bool:
        """Whether a group for which ``where`` holds has something waiting."""
        return any(where(g) for g in self._groups)

    def pop(self, where: Callable[[Hashable], bool] | None = None) -> Q:
        """The next question: the next group's (the next for which ``where`` holds) next owner's oldest;
        ``IndexError`` when there is none."""
        group = next((g for g in self._groups if where is None or where(g)), _NONE)
        if group is _NONE:
            raise IndexError("pop from an empty FairQueue")
        owners = self._groups[group]
        owner, queue = next(iter(owners.items()))
        item = queue.popleft()
        self._size -= 1
        del owners[owner]
        if queue:
            owners[owner] = queue  # back of its group's line
        del self._groups[group]
        if owners:
            self._groups[group] = owners  # back of the line of groups
        return item

    def remove(self, item: Q) -> bool:
        """Take ``item`` out if it is waiting; True if it was."""
        owners = self._groups.get(item.group)
        queue = None if owners is None else owners.get(item.owner)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        self._size -= 1
        self._forget_if_empty(item.group, item.owner)
        return True

    def waiting(self, owner: Hashable, group: Hashable = None) -> int:
        owners = self._groups.get(group)
        return 0 if owners is None else len(owners.get(owner, ()))

    def clear(self) -> list[Q]:
        """Empty the queue; returns what was waiting."""
        items = list(self)
        self._groups.clear()
        self._size = 0
        return items

    def __iter__(self) -> Iterator[Q]:
        for owners in self._groups.values():
            for queue in owners.values():
                yield from queue

    def __contains__(self, item: object) -> bool:
        return any(item is q for q in self)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0
