"""Every family, compression off: our injected path equals the library's own path, the cached prefix equals
a full recompute, and a prefix rebuilt after eviction equals a recompute with the same positions."""

from __future__ import annotations

import pytest
import torch

from memory import RollingMemory
from models.adapter import Turn
from models.context import Chunk
from models.mrope import text_positions
from tests.families import FAMILIES, adapter, frames, library_logits, segments

TOL = 1e-4
QUESTION = "What changed in the last frames?"


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", FAMILIES)
def test_injected_path_equals_library_path(name: str) -> None:
    ad = adapter(name)
    images = frames(3)
    segs = segments(ad, images)
    assert [s.num_tokens for s in segs] == [ad.tokens_per_frame] * 3
    prefix = ad.build_prefix(segs[:2])
    ad.extend_prefix(prefix, segs[2:])  # appended as the engine does when a frame arrives
    ours = ad.question_logits(prefix, [], QUESTION)
    assert _diff(ours, library_logits(ad, segs, images, QUESTION)) <= TOL
    assert _diff(ours, ad.full_logits(segs, [], QUESTION)) <= TOL
    assert prefix.length == ad.assemble([ad.head_text()] + [p for s in segs for p in ad.segment_pieces(s)], 0).length


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_prefix_serves_several_questions_unchanged(name: str) -> None:
    ad = adapter(name)
    segs = segments(ad, frames(2, seed=1))
    prefix = ad.build_prefix(segs)
    length, position = prefix.length, prefix.next_position
    turns = [Turn("What is red?", "A ball.")]
    first = ad.question_logits(prefix, turns, QUESTION)
    ad.question_logits(prefix, [], "Something else entirely?")
    again = ad.question_logits(prefix, turns, QUESTION)
    assert (prefix.length, prefix.next_position, prefix.cache.get_seq_length()) == (length, position, length)
    assert _diff(first, again) <= TOL
    assert _diff(first, ad.full_logits(segs, turns, QUESTION)) <= TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_rebuilt_prefix_after_eviction_equals_recompute(name: str) -> None:
    ad = adapter(name)
    images = frames(5, seed=2)
    enc = ad.encode(images)
    n = ad.tokens_per_frame
    mem = RollingMemory(3 * n, low_water=2 / 3)  # the 4th frame evicts the two oldest, the 5th is appended
    prefix = None
    for i in range(len(images)):
        mem.add_frame(enc.tokens[i], float(i), {k: v[i] for k, v in enc.extras.items()})
        segs = list(mem.segments())
        if prefix is not None and prefix.segment_ids == tuple(s.id for s in segs[: len(prefix.segment_ids)]):
            ad.extend_prefix(prefix, segs[len(prefix.segment_ids) :])
        else:
            prefix = ad.build_prefix(segs)
    assert prefix is not None
    assert [s.id for s in segs] == [2, 3, 4]
    assert prefix.segment_ids == (2, 3, 4)
    ours = ad.question_logits(prefix, [], QUESTION)
    assert _diff(ours, ad.full_logits(segs, [], QUESTION)) <= TOL
    assert _diff(ours, library_logits(ad, segs, images[2:], QUESTION)) <= TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_streams_text_and_restores_the_prefix(name: str) -> None:
    import threading

    ad = adapter(name)
    prefix = ad.build_prefix(segments(ad, frames(2, seed=3)))
    length = prefix.length
    pieces = list(ad.generate(prefix, [], QUESTION, 8, threading.Event()))
    assert prefix.cache.get_seq_length() == length
    assert all(isinstance(p, str) for p in pieces)
    again = list(ad.generate(prefix, [], QUESTION, 8, threading.Event()))
    assert again == pieces  # greedy on an unchanged prefix: the same answer


def test_qwen_with_one_dimensional_positions_would_differ() -> None:
    """The control for the exactness tests: the library's default (1-D positions through inputs_embeds) is
    measurably wrong on the same tokens, so the tests above can tell."""
    ad = adapter("tiny-random-qwen2_5_vl")
    images = frames(2)
    segs = segments(ad, images)
    pieces = [ad.head_text()] + [p for s in segs for p in ad.segment_pieces(s)] + [ad.suffix_text([], QUESTION)]
    chunk = ad.assemble(pieces, 0)
    flat = Chunk(chunk.embeds, text_positions(0, chunk.length, ad.device), chunk.visual, chunk.extras, chunk.length)
    from transformers import DynamicCache

    with torch.inference_mode():
        right = ad.run(chunk, DynamicCache(), all_logits=True)[0]
        wrong = ad.run(flat, DynamicCache(), all_logits=True)[0]
    assert _diff(right, wrong) > 10 * TOL


def test_qwen3_without_deepstack_would_differ() -> None:
    ad = adapter("tiny-random-qwen3_vl")
    images = frames(2)
    segs = segments(ad, images)
    pieces = [ad.head_text()] + [p for s in segs for p in ad.segment_pieces(s)] + [ad.suffix_text([], QUESTION)]
    chunk = ad.assemble(pieces, 0)
    from transformers import DynamicCache

    with torch.inference_mode():
        right = ad.run(chunk, DynamicCache(), all_logits=True)[0, -5:]
        plain = ad.forward(chunk.embeds, chunk.positions, DynamicCache(), all_logits=True)[0, -5:]
    assert _diff(right, library_logits(ad, segs, images, QUESTION)[-5:]) <= TOL
    assert _diff(right, plain) > 10 * TOL
