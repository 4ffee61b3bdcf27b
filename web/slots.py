"""Long-lived clients at once — websocket connections and chat completions in progress — per client
address and in all, so that no address (and no crowd) can hold every connection the server has."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Clients allowed at once (websocket connections and chat completions together), per client
    address and in all."""

    per_address: int = 16
    total: int = 256


class Slots:
    """Who holds a slot now (event loop only)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._per_address: Counter[str] = Counter()
        self._total = 0

    def refusal(self, address: str) -> tuple[str, bool] | None:
        """Why ``address`` cannot take a slot now, and whether it is that address's own limit (rather than
        the server's); None if it can."""
        if self._per_address[address] >= self.limits.per_address:
            return f"too many connections from your address (at most {self.limits.per_address})", True
        if self._total >= self.limits.total:
            return f"too many connections (at most {self.limits.total})", False
        return None

    def take(self, address: str) -> Callable[[], None]:
        """Hold a slot for ``address`` (check :meth:`refusal` first); returns its release (idempotent)."""
        self._per_address[address] += 1
        self._total += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._total -= 1
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

        return release

    def __len__(self) -> int:
        return self._total
