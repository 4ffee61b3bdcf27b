"""Which shard holds which stream: the gateway's placement map (pure and synchronous).

A new stream goes to the shard with the least load: the fewest streams, then the fewest questions
waiting, then the lowest index; a shard that is down (restarting) is taken only when no other can hold
it. The map is the truth the shards are brought to: after a restart, a shard is given back exactly the
streams the map says it holds.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from errors import Busy, Conflict, UnknownStream


class Placement:
    """Stream name -> shard index, for ``shards`` shards of ``capacity`` streams each."""

    def __init__(self, shards: int, capacity: int) -> None:
        if shards < 1:
            raise ValueError("at least one shard")
        self.shards = shards
        self.capacity = capacity
        self._of: dict[str, int] = {}

    def shard_of(self, name: str) -> int | None:
        return self._of.get(name)

    def names(self) -> list[str]:
        """Every placed stream, in the order they were placed."""
        return list(self._of)

    def on(self, shard: int) -> list[str]:
        return [n for n, s in self._of.items() if s == shard]

    def load(self, shard: int) -> int:
        return sum(1 for s in self._of.values() if s == shard)

    def choose(self, *, queued: Sequence[int] = (), down: Collection[int] = (), exclude: Collection[int] = ()) -> int:
        """The shard a new stream should go to (see the module doc); :class:`Busy` when every shard is full.
        ``queued[i]``: questions waiting on shard ``i``."""
        candidates = [i for i in range(self.shards) if i not in exclude and self.load(i) < self.capacity]
        if not candidates:
            raise Busy(f"at most {self.capacity} streams on each of {self.shards} shard(s)")
        return min(candidates, key=lambda i: (i in down, self.load(i), queued[i] if i < len(queued) else 0, i))

    def place(self, name: str, *, queued: Sequence[int] = (), down: Collection[int] = ()) -> int:
        """Put a new stream on the least loaded shard; :class:`Conflict` for a name already placed."""
        if name in self._of:
            raise Conflict(f"a stream named {name!r} already exists")
        shard = self.choose(queued=queued, down=down)
        self._of[name] = shard
        return shard

    def move(self, name: str, shard: int) -> int:
        """Put stream ``name`` on ``shard``; returns the shard it was on. :class:`Busy` if ``shard`` is full."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"no shard {shard}")
        old = self._of.get(name)
        if old is None:
            raise UnknownStream(f"no stream named {name!r}")
        if old != shard and self.load(shard) >= self.capacity:
            raise Busy(f"shard {shard} holds {self.capacity} streams already")
        self._of[name] = shard
        return old

    def remove(self, name: str) -> int:
        """Forget a stream; returns the shard it was on. :class:`UnknownStream` if it is not placed."""
        shard = self._of.pop(name, None)
        if shard is None:
            raise UnknownStream(f"no stream named {name!r}")
        return shard

    def __contains__(self, name: object) -> bool:
        return name in self._of

    def __len__(self) -> int:
        return len(self._of)
