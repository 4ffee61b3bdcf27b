"""A model that can tell when the lights are off: the test double for watches until the shipped demo model
(another issue) lands — then swap :func:`dark_model` for it.

:class:`DarkModel` is the real tiny SmolVLM2 adapter (real encoder, memory, cached prefix, and a real
yes/no prefill on every evaluation, so the cost and the cache handling are the production ones) that also
reads each frame's mean brightness: :meth:`encode` carries it with every visual token as a per-token
attribute (``luma``, merged with the tokens like any other), :meth:`update_prefix` notes the newest frame's
brightness on the prefix it returns, and :meth:`yes_probability` answers a question about darkness from
it — yes when the newest frame in the cached prefix is dark — and any other question with the model's own
(random) reading. Everything is per stream and per prefix: several streams can be watched at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from memory.segment import Segment
from models.adapter import Encoded, Prefix
from models.context import EmbeddingPrefix
from models.families.smolvlm import SmolVLMAdapter

#: Mean brightness (0-1) below which a frame is dark. The demo scene is ~0.55 lit and ~0.25 with the
#: lights off.
DARK_BELOW = 0.4
#: Words of a question about darkness.
DARK_WORDS = ("dark", "lights are off", "lights off", "light is off", "light off")
YES, NO = 0.95, 0.05


class DarkModel(SmolVLMAdapter):
    """See the module doc."""

    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        encoded = super().encode(images)
        luma = torch.tensor([float(np.asarray(im).mean()) / 255.0 for im in images], dtype=torch.float32)
        per_token = luma[:, None].expand(len(images), int(encoded.tokens.shape[1])).contiguous()
        return Encoded(encoded.tokens, {**encoded.extras, "luma": per_token.to(encoded.tokens.device)})

    def update_prefix(self, prefix: Prefix | None, segments: Sequence[Segment]) -> EmbeddingPrefix:
        out = super().update_prefix(prefix, segments)
        newest = max(segments, key=lambda s: s.end, default=None)
        if newest is not None and "luma" in newest.extras:
            at_end = newest.times >= newest.times.max()  # the tokens of its newest frame
            out.meta["luma"] = float(newest.extras["luma"][at_end].float().mean())
        return out

    def yes_probability(self, prefix: Prefix, question: str) -> float:
        model_says = super().yes_probability(prefix, question)  # the real prefill: its cost, its cache
        luma = prefix.meta.get("luma") if isinstance(prefix, EmbeddingPrefix) else None
        if not isinstance(luma, float) or not any(w in question.lower() for w in DARK_WORDS):
            return model_says
        return YES if luma < DARK_BELOW else NO


def dark_model(tiny: SmolVLMAdapter) -> DarkModel:
    """The double, sharing the tiny model's weights."""
    return DarkModel(tiny.model, tiny.tokenizer, "tiny-random", default_budget=1024)
