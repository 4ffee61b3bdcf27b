"""The one frame type that flows from a source to the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One sampled video frame.

    Attributes:
        stream: name of the stream it belongs to.
        index: sequence number among the frames this source emitted (0, 1, 2, ...).
        pts: stream time in seconds since the source started (presentation time for files and cameras).
        captured_at: wall-clock time (seconds since the epoch) when the source produced the frame; the
            age of a frame is ``now - captured_at``.
        image: ``[H, W, 3]`` uint8 RGB array, read-only.
    """

    stream: str
    index: int
    pts: float
    captured_at: float
    image: np.ndarray

    def __post_init__(self) -> None:
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be [H, W, 3] uint8 RGB, got {img.dtype} {img.shape}")
        if img.flags.writeable:
            img.setflags(write=False)
