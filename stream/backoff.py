"""Reconnection delays: exponential, capped, with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays ``base * 2**n`` capped at ``cap``, each scaled by a random factor in ``[1 - jitter, 1]``.

    Jitter spreads the reconnects of many cameras that dropped together (a switch rebooting) so they do
    not all hit the network at the same instant. ``reset()`` (called on the first frame of a connection)
    starts again from ``base``. ``rand`` returns floats in ``[0, 1)``; inject it to make delays deterministic.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 8.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rand = rand
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds; each call doubles the next one up to the cap."""
        # min() before the power would overflow on a long outage: 2**1100 is not a float.
        ceiling = min(self.cap, self.base * 2 ** min(self._attempt, 64))
        self._attempt += 1
        return ceiling * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        self._attempt = 0
