"""What a question adds after the cached prefix: recalled clips and the newest frame in detail, for every
family — exact against one forward pass over everything, the prefix left untouched — and what the model is
read for without generating (recall keys, yes/no)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from memory import RollingMemory
from models.adapter import SupportsRecall, SupportsYesNo
from models.context import EmbeddingContext
from models.probe import relevance
from tests.families import FAMILIES, adapter, frames, segments


def archived(ad: EmbeddingContext, n: int) -> list:
    """Segments as recall would load them: older clips of the same stream (times before the memory's)."""
    enc = ad.encode(frames(n, seed=5))
    mem = RollingMemory(100_000)
    for i in range(n):
        mem.add_frame(enc.tokens[i], -100.0 + i, {k: v[i] for k, v in enc.extras.items()})
    return list(mem.segments())


@pytest.mark.parametrize("name", FAMILIES)
def test_recalled_clips_and_detail_go_after_the_prefix_exactly(name: str) -> None:
    ad = adapter(name)
    segs = segments(ad, frames(3))
    prefix = ad.build_prefix(segs)
    length = prefix.length
    image = frames(1, seed=9)[0]
    extra = ad.context_pieces(archived(ad, 2), image)
    cached = ad.question_logits(prefix, [], "What happened earlier?", extra)
    full = ad.full_logits(segs, [], "What happened earlier?", extra)
    assert float((cached - full).abs().max()) <= 1e-4
    assert prefix.length == length  # untouched: the recalled clips and the detail are not cached
    text = "".join(ad.generate(prefix, [], "What now?", 4, threading.Event(), recalled=archived(ad, 1), detail=image))
    assert isinstance(text, str) and prefix.length == length
    # The extra context changes what the model reads.
    plain = ad.question_logits(prefix, [], "What happened earlier?")
    assert float((plain[-1] - cached[-1]).abs().max()) > 1e-6


@pytest.mark.parametrize("name", FAMILIES)
def test_recall_keys_and_queries_score_clips(name: str) -> None:
    ad = adapter(name)
    assert isinstance(ad, SupportsRecall)
    clips = archived(ad, 3)
    keys = [ad.recall_keys(c) for c in clips]
    assert all(k.dtype == torch.float16 and k.ndim == 2 for k in keys)
    queries = ad.recall_queries("Was the door open?")
    assert queries.ndim == 3 and queries.shape[0] == keys[0].shape[0]
    scores = [relevance(queries, k) for k in keys]
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert relevance(queries, keys[0]) == relevance(queries, keys[0].clone())  # deterministic
    assert not np.allclose(scores, scores[0])  # clips are told apart


@pytest.mark.parametrize("name", FAMILIES)
def test_yes_probability_reads_the_next_token_and_restores_the_prefix(name: str) -> None:
    ad = adapter(name)
    assert isinstance(ad, SupportsYesNo)
    prefix = ad.build_prefix(segments(ad, frames(2)))
    before = ad.question_logits(prefix, [], "Is the light on?")
    p = ad.yes_probability(prefix, "Is the light on? Answer yes or no.")
    assert 0.0 <= p <= 1.0
    assert torch.equal(ad.question_logits(prefix, [], "Is the light on?"), before)
