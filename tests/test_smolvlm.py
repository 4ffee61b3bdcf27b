"""The SmolVLM2 adapter on the tiny real model: encoding, the cached prefix, generation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from errors import TooLarge
from memory import RollingMemory
from models.adapter import CountsUsage, Turn
from models.context import EmbeddingPrefix
from models.families.smolvlm import SmolVLMAdapter
from stream.demo import render


def frames(n: int, start: float = 0.0) -> list[np.ndarray]:
    return [render(start + i * 1.7) for i in range(n)]


def memory_of(adapter: SmolVLMAdapter, n: int, budget: int = 10_000) -> RollingMemory:
    mem = RollingMemory(budget)
    enc = adapter.encode(frames(n))
    for i in range(n):
        mem.add_frame(enc.tokens[i], float(i))
    return mem


def test_encoding_shapes_and_batching_is_exact(tiny: SmolVLMAdapter) -> None:
    imgs = frames(11)
    batch = tiny.encode(imgs).tokens
    assert batch.shape == (11, tiny.tokens_per_frame, 64)
    one_by_one = torch.cat([tiny.encode([img]).tokens for img in imgs])
    assert torch.allclose(batch, one_by_one, atol=1e-5)


def test_cached_prefix_logits_equal_a_full_recompute(tiny: SmolVLMAdapter) -> None:
    segs = memory_of(tiny, 6).segments()
    turns = [Turn("What is red?", "A ball.")]
    prefix = tiny.build_prefix(segs)
    cached = tiny.question_logits(prefix, turns, "Where is it now?")
    full = tiny.full_logits(segs, turns, "Where is it now?")
    assert cached.shape == full.shape and cached.shape[0] > 5
    assert (cached - full).abs().max().item() <= 1e-4
    # The question left the prefix as it was: a second question is exact too.
    again = tiny.question_logits(prefix, [], "Anything else?")
    assert (again - tiny.full_logits(segs, [], "Anything else?")).abs().max().item() <= 1e-4


def test_incremental_extension_equals_a_full_recompute(tiny: SmolVLMAdapter) -> None:
    segs = memory_of(tiny, 7).segments()
    prefix = tiny.build_prefix(segs[:2])
    for k in (3, 5, 7):
        tiny.extend_prefix(prefix, segs[prefix.frames : k])
        assert isinstance(prefix, EmbeddingPrefix) and prefix.segment_ids == tuple(s.id for s in segs[:k])
    cached = tiny.question_logits(prefix, [], "What moved?")
    full = tiny.full_logits(segs, [], "What moved?")
    assert (cached - full).abs().max().item() <= 1e-4


def test_the_cached_prefix_changes_the_answer_distribution(tiny: SmolVLMAdapter) -> None:
    """Guards the exactness tests: different visual context must give different logits."""
    a = tiny.full_logits(memory_of(tiny, 3).segments(), [], "What?")
    mem = RollingMemory(10_000)
    enc = tiny.encode(frames(3, start=31.0))  # the lights are off
    for i in range(3):
        mem.add_frame(enc.tokens[i], float(i))
    b = tiny.full_logits(mem.segments(), [], "What?")
    assert (a - b).abs().max().item() > 1e-3


def test_generation_streams_text_and_restores_the_prefix(tiny: SmolVLMAdapter) -> None:
    segs = memory_of(tiny, 4).segments()
    prefix = tiny.build_prefix(segs)
    assert isinstance(prefix, EmbeddingPrefix)
    before = prefix.cache.get_seq_length()
    pieces = list(tiny.generate(prefix, [], "Describe it.", 12, threading.Event()))
    assert pieces and prefix.cache.get_seq_length() == before == prefix.length
    ids = list(tiny.generate_ids(prefix, [], "Describe it.", 12, threading.Event()))
    assert "".join(pieces) == tiny.tokenizer.decode(ids, skip_special_tokens=True)
    # Deterministic (greedy) and unaffected by the earlier generation.
    assert list(tiny.generate(prefix, [], "Describe it.", 12, threading.Event())) == pieces


def test_the_answer_counts_its_tokens_exactly(tiny: SmolVLMAdapter) -> None:
    """Usage (OpenAI's usage counts): completion = the ids generated, prompt = the prefix plus the question
    and turns as the model read them (after older turns were dropped to fit)."""
    prefix = tiny.build_prefix(memory_of(tiny, 2).segments())
    assert isinstance(prefix, EmbeddingPrefix)
    turns = [Turn("Was it red?", "No.")]
    for limit in (1, 7, 40):
        pieces = tiny.generate(prefix, turns, "Describe it.", limit, threading.Event())
        assert isinstance(pieces, CountsUsage)
        assert pieces.usage.prompt is None  # nothing read yet: generation is lazy
        text = "".join(pieces)
        ids = list(tiny.generate_ids(prefix, turns, "Describe it.", limit, threading.Event()))
        assert pieces.usage.completion == len(ids) <= limit
        assert text == tiny.tokenizer.decode(ids, skip_special_tokens=True)
        suffix = tiny.fit_suffix(prefix, turns, "Describe it.", limit)
        assert pieces.usage.prompt == prefix.length + len(tiny.tokenize(suffix))


def test_cancel_stops_generation_and_restores_the_prefix(tiny: SmolVLMAdapter) -> None:
    prefix = tiny.build_prefix(memory_of(tiny, 2).segments())
    cancel = threading.Event()
    out = []
    for i, piece in enumerate(tiny.generate_ids(prefix, [], "Talk.", 500, cancel)):
        out.append(piece)
        if i == 2:
            cancel.set()
    assert len(out) == 3
    assert prefix.length == prefix.cache.get_seq_length()


def test_segment_headers_give_times(tiny: SmolVLMAdapter) -> None:
    seg = memory_of(tiny, 1).segments()[0]
    pieces = tiny.segment_pieces(seg)
    assert isinstance(pieces[0], str) and "Frame from 0:00:00" in pieces[0]
    assert pieces[1] is seg.tokens


@pytest.mark.parametrize("n", [0, 1])
def test_an_empty_or_tiny_memory_still_answers(tiny: SmolVLMAdapter, n: int) -> None:
    prefix = tiny.build_prefix(memory_of(tiny, n).segments() if n else ())
    assert prefix.frames == n
    ids = list(tiny.generate_ids(prefix, [], "Hello?", 4, threading.Event()))
    assert len(ids) <= 4
    assert prefix.cache.get_seq_length() == prefix.length


def test_a_failure_inside_the_language_model_leaves_the_prefix_exact(tiny: SmolVLMAdapter) -> None:
    segs = memory_of(tiny, 3).segments()
    prefix = tiny.build_prefix(segs)
    layer = tiny.model.model.text_model.layers[1]

    def boom(*_: object) -> None:
        raise RuntimeError("out of memory in layer 1")

    handle = layer.register_forward_hook(boom)  # layer 0 is extended, layer 1 is not
    try:
        with pytest.raises(RuntimeError, match="layer 1"):
            list(tiny.generate_ids(prefix, [], "Anything?", 8, threading.Event()))
        with pytest.raises(RuntimeError, match="layer 1"):
            tiny.extend_prefix(prefix, memory_of(tiny, 4).segments()[3:])
    finally:
        handle.remove()
    assert [lay.keys.shape[-2] for lay in prefix.cache.layers] == [prefix.length] * len(prefix.cache.layers)
    cached = tiny.question_logits(prefix, [], "Still there?")
    assert (cached - tiny.full_logits(segs, [], "Still there?")).abs().max().item() <= 1e-4


def test_old_turns_are_dropped_to_fit_the_model_and_a_question_too_long_is_refused(tiny: SmolVLMAdapter) -> None:
    prefix = tiny.build_prefix(memory_of(tiny, 2).segments())
    assert isinstance(prefix, EmbeddingPrefix)
    turns = [Turn("q" * 300, "a" * 300) for _ in range(5)]
    limit = tiny.max_positions
    try:
        tiny.max_positions = prefix.length + 1000  # room for about one turn of ~610 tokens
        suffix = tiny.fit_suffix(prefix, turns, "Now?", 100)
        assert suffix.count("q" * 300) == 1
        with pytest.raises(TooLarge):
            list(tiny.generate_ids(prefix, turns, "x" * 2000, 100, threading.Event()))
    finally:
        tiny.max_positions = limit
