"""The visual-token budget of a stream's memory, fitted to the model's context window.

The cached prefix holds the memory's visual tokens and their text (the opening and one time label per
segment); a question adds earlier turns, the question and the answer on top. A default budget leaves
:data:`RESERVE` positions for those, counted for a memory at its fullest (every tier at capacity: the most
segments, so the most labels, with the longest time labels). A budget given explicitly is kept if the full
memory fits the window at all (a warning says how little room is left), and refused otherwise.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from errors import ConfigError
from memory import HiCoSettings, Segment
from models.adapter import ModelAdapter

log = logging.getLogger("livesight.engine")

#: Positions a default budget leaves for the conversation, the question and the answer: a question of
#: several hundred tokens with the default answer length (128), earlier turns dropped to fit.
RESERVE = 1024
_LATEST = 86_399.0  # 23:59:59: the longest time labels a stream's clock shows


def full_memory(adapter: ModelAdapter, settings: HiCoSettings) -> list[Segment]:
    """Segments shaped like a full memory under ``settings`` (oldest first), with the adapter's own
    per-token attributes, for counting what the prompt around them costs."""
    encoded = adapter.encode([np.zeros((32, 32, 3), np.uint8)])
    native = int(encoded.tokens.shape[1])
    segments = []
    for i, (frames, n) in enumerate(settings.full_layout()):
        rows = torch.arange(n) % native  # a frame's tokens, repeated or cut to the segment's size
        tokens = encoded.tokens[0][rows]
        extras = {k: v[0][rows] for k, v in encoded.extras.items()}
        start = _LATEST - frames
        times = torch.full((n,), start, dtype=torch.float64)
        sizes = torch.ones(n, dtype=torch.int64)
        segments.append(Segment(i, start, _LATEST, frames, tokens, times, sizes, extras))
    return segments


def text_overhead(adapter: ModelAdapter, settings: HiCoSettings) -> int:
    """Prefix tokens a full memory costs besides its visual tokens (the opening and the labels)."""
    segments = full_memory(adapter, settings)
    return adapter.prefix_length(segments) - sum(s.num_tokens for s in segments)


def recall_reserve(tokens: int, settings: HiCoSettings, adapter: ModelAdapter | None = None) -> int:
    """Positions questions need for ``tokens`` visual tokens of recalled clips: the clips, their labels and
    the line that introduces them (labels counted on a clip-shaped segment when ``adapter`` is given)."""
    if tokens <= 0:
        return 0
    clip = settings.tiers[0]
    n = max(1, tokens // clip.tokens)
    label = 32
    if adapter is not None:
        one = full_memory(adapter, settings)[:1]
        label = adapter.prefix_length(one) - adapter.prefix_length([]) - one[0].num_tokens
    return n * (clip.tokens + label) + 64


def fit_budget(adapter: ModelAdapter, requested: int | None, *, extra: int = 0) -> HiCoSettings:
    """The memory settings for ``requested`` visual tokens per stream, or for the model's default budget
    shrunk until a full memory leaves :data:`RESERVE` (plus ``extra``: recalled clips) positions free.
    Raises :class:`ConfigError` if ``requested`` does not fit at all, or no budget fits."""
    reserve = RESERVE + extra
    budget = requested or adapter.default_budget
    window = adapter.max_positions
    while True:
        try:
            settings = HiCoSettings.fit(budget, adapter.tokens_per_frame)
        except ValueError as exc:
            raise ConfigError(f"{exc} (model {adapter.model_id}; raise --budget)") from None
        if window is None:
            return settings
        used = settings.max_tokens() + text_overhead(adapter, settings)
        room = window - used
        if room >= reserve:
            return settings
        if requested is not None:
            if room <= 0:
                raise ConfigError(
                    f"--budget {requested}: a full memory needs {used} positions (visual tokens and their labels), "
                    f"more than {adapter.model_id}'s context window of {window}; lower --budget"
                )
            log.warning(
                "--budget %d leaves %d of %d positions for questions and answers once memory is full; long "
                "questions will be refused as too large",
                requested,
                room,
                window,
            )
            return settings
        # Shrink in proportion to what is missing (the labels grow with the budget, as the segments do; at
        # least one native frame's worth) and lay the memory out again.
        budget = min(budget - adapter.tokens_per_frame, budget * (window - reserve) // used)
