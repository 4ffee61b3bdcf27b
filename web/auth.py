"""Who a client is (its role), and how hard it may guess.

Two roles, as Frigate has them: the **admin** token may do everything (add and remove streams, publish
over WHIP, read health details); a **viewer** token sees only the streams named for it (ask, subscribe,
list) and nothing else — a stream it may not see is reported as unknown, so a viewer cannot probe for
names. Tokens are compared in constant time.

Failed attempts are limited per client address: after ``max_failures`` within ``window_s`` seconds,
that address is refused without checking for ``window_s`` seconds (a retryable error that says when).
Every failure is logged with the address (at most one line per address per window, so a flood cannot
flood the log). Both sides of that bookkeeping are bounded: at most ``max_addresses`` addresses are
tracked, least recently failed forgotten first.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from errors import Unauthorized

log = logging.getLogger("livesight.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client: ``streams`` None means every stream (the admin)."""

    name: str
    streams: frozenset[str] | None = None

    @property
    def admin(self) -> bool:
        return self.streams is None

    def sees(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams


ADMIN = Principal("admin")


@dataclass(frozen=True, slots=True)
class Viewer:
    """A viewer token from the configuration: its name (for logs) and the streams it may see."""

    name: str
    token: str
    streams: frozenset[str]


class TooManyFailures(Unauthorized):
    """An address that failed too often: refused until its window passes."""

    default_retryable = True


class FailureLimiter:
    """Failed authentications per address (see the module doc)."""

    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 60.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._logged: dict[str, float] = {}
        self.total = 0  # failures seen since start (metrics)

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def check(self, address: str) -> None:
        """Raise :class:`TooManyFailures` if ``address`` is locked out now."""
        now = self._clock()
        times = self._recent(address, now)
        if len(times) >= self.max_failures:
            wait = max(1, round(times[0] + self.window_s - now))
            raise TooManyFailures(f"too many failed attempts from your address; try again in {wait} s")

    def failed(self, address: str, why: str) -> None:
        now = self._clock()
        self.total += 1
        times = self._recent(address, now)
        if address not in self._failures:
            times = self._failures[address] = deque(maxlen=self.max_failures)
            while len(self._failures) > self._max_addresses:
                old, _ = self._failures.popitem(last=False)
                self._logged.pop(old, None)
        self._failures.move_to_end(address)
        times.append(now)
        if now - self._logged.get(address, -self.window_s) >= self.window_s:
            self._logged[address] = now
            log.warning(
                "authentication failed from %s: %s (further failures from it within %.0f s are not logged)",
                address,
                why,
                self.window_s,
            )


class Authenticator:
    """Tokens to principals, with failures limited per address."""

    def __init__(self, admin_token: str, viewers: Iterable[Viewer] = (), limiter: FailureLimiter | None = None) -> None:
        self._admin = admin_token.encode()
        self._viewers = [(v.token.encode(), Principal(v.name, v.streams)) for v in viewers]
        self.limiter = limiter or FailureLimiter()

    def authenticate(self, token: str, address: str) -> Principal:
        """The principal ``token`` stands for; :class:`Unauthorized` (or :class:`TooManyFailures`) if none."""
        self.limiter.check(address)
        given = token.encode()
        found: Principal | None = None
        # Every token is compared, whichever matches, so timing does not tell which one came close.
        if hmac.compare_digest(given, self._admin):
            found = ADMIN
        for secret, principal in self._viewers:
            if hmac.compare_digest(given, secret) and found is None:
                found = principal
        if found is None:
            self.limiter.failed(address, "wrong token")
            raise Unauthorized("wrong token")
        return found

    def refuse(self, address: str, why: str) -> None:
        """Count a failure that had no token to check (a missing or malformed credential)."""
        self.limiter.check(address)
        self.limiter.failed(address, why)
