"""Choosing which decoded frames to keep, by stream time."""

from __future__ import annotations


class Sampler:
    """Keeps frames at ``fps`` frames per second of stream time.

    Decisions depend only on presentation times, so a file replayed fast samples exactly the frames it
    samples in real time. A timestamp jump backwards (a camera restarting its clock) resets the schedule.
    """

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"sampling rate must be > 0, got {fps}")
        self.period = 1.0 / fps
        self._next: float | None = None

    def due(self, pts: float) -> bool:
        """Whether the frame at ``pts`` seconds should be kept; advances the schedule if so."""
        if self._next is None or pts < self._next - self.period:
            self._next = pts
        if pts + 1e-9 < self._next:
            return False
        # Step from the schedule, not from pts, so jitter does not drift the rate; skip missed slots.
        missed = int((pts - self._next) / self.period)
        self._next += (missed + 1) * self.period
        return True
