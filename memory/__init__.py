"""The rolling visual memory: a pure, synchronous, deterministic core.

Tensors and timestamps in, tensors out. No asyncio, no threads, no clock reads, no device choices:
whatever device the tokens arrive on is the device they stay on.
"""

from memory.hico import HiCoMemory, HiCoStats, Record, TierStats
from memory.layout import HiCoSettings, Tier
from memory.merge import Merged, merge_tokens
from memory.rolling import MemoryStats, RollingMemory
from memory.segment import Segment

__all__ = [
    "HiCoMemory",
    "HiCoSettings",
    "HiCoStats",
    "MemoryStats",
    "Merged",
    "Record",
    "RollingMemory",
    "Segment",
    "Tier",
    "TierStats",
    "merge_tokens",
]
