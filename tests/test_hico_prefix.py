"""The cached prefix over a HiCo memory: incremental updates equal a recompute (logits, tiny real model)."""

from __future__ import annotations

import threading

import pytest
import torch

from memory.hico import HiCoMemory, HiCoSettings, Tier
from models.adapter import Turn
from models.context import EmbeddingPrefix
from models.families.smolvlm import SmolVLMAdapter
from stream.demo import render

LAYOUTS = {
    # The default family, its span shortened so that 80 frames reach eviction: one-frame clips (the tiny
    # model's 16 tokens per frame are clip detail already), tier 1 passing 20 clips at once, and the last
    # tier evicting the 5 segments they make at once.
    "default": HiCoSettings.fit(480, 16, span_frames=24),
    # 4-frame clips merged jointly behind a ring of recent native frames; the last tier evicts 3 at once.
    "clips+recent": HiCoSettings(480, 16, (Tier(4, 32, 1, 4), Tier(8, 32, 0, 1), Tier(16, 16, 1, 3)), recent_frames=2),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_incremental_prefix_equals_recompute_through_remerges_and_eviction(
    tiny: SmolVLMAdapter, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    cfg = LAYOUTS[layout]
    assert cfg.native_tokens == tiny.tokens_per_frame
    mem = HiCoMemory(cfg)
    frames = tiny.encode([render(float(t), 128, 72) for t in range(80)]).tokens
    prefilled = 0
    forward = tiny.forward

    def counting(embeds: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        nonlocal prefilled
        prefilled += int(embeds.shape[1])
        return forward(embeds, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tiny, "forward", counting)
    prefix: EmbeddingPrefix | None = None
    rebuilt = 0
    turns = [Turn("what is red?", "a ball")]
    worst = 0.0
    batched = 0
    for t in range(80):
        evicted = mem.stats().long_term
        mem.add_frame(frames[t], float(t))
        batched = max(batched, mem.stats().long_term - evicted)
        prefix = tiny.update_prefix(prefix, mem.segments())
        rebuilt += prefix.cache.get_seq_length()
        assert prefix.segment_ids == tuple(s.id for s in mem.segments())
        assert prefix.length == prefix.cache.get_seq_length()
        if t % 7 == 3 or t == 79:
            monkeypatch.setattr(tiny, "forward", forward)
            cached = tiny.question_logits(prefix, turns, "what happened at 0:00:10?")
            full = tiny.full_logits(mem.segments(), turns, "what happened at 0:00:10?")
            monkeypatch.setattr(tiny, "forward", counting)
            worst = max(worst, float((cached - full).abs().max()))
            assert prefix.length == prefix.cache.get_seq_length()  # the question left the cache as it was
    assert worst <= 1e-4
    st = mem.stats()
    assert batched >= 3  # several segments left the context in one step
    assert st.tiers[1].frames > 0 and st.tiers[-1].frames > 0
    assert prefix is not None
    assert prefix.visual_tokens == st.tokens <= cfg.budget
    assert (prefix.start, prefix.end, prefix.frames) == (st.start, st.end, st.frames)
    # Reuse is real: far fewer tokens were prefilled than rebuilding the whole prefix after every frame.
    assert prefilled < rebuilt / 2


def test_answers_stream_on_an_updated_prefix(tiny: SmolVLMAdapter) -> None:
    mem = HiCoMemory(HiCoSettings.fit(480, tiny.tokens_per_frame))
    frames = tiny.encode([render(float(t), 128, 72) for t in range(24)]).tokens
    prefix = None
    for t in range(24):
        mem.add_frame(frames[t], float(t))
        prefix = tiny.update_prefix(prefix, mem.segments())
    assert prefix is not None
    length = prefix.length
    text = "".join(tiny.generate(prefix, [], "what do you see?", 8, threading.Event()))
    assert isinstance(text, str)
    assert prefix.length == prefix.cache.get_seq_length() == length


def test_a_prefix_without_segment_boundaries_is_rebuilt(tiny: SmolVLMAdapter) -> None:
    """A family override of build_prefix that records no boundaries still gets a correct prefix."""
    mem = HiCoMemory(HiCoSettings.fit(480, tiny.tokens_per_frame))
    frames = tiny.encode([render(float(t), 128, 72) for t in range(12)]).tokens
    for t in range(8):
        mem.add_frame(frames[t], float(t))
    prefix = tiny.build_prefix(mem.segments())
    prefix.ends = ()
    for t in range(8, 12):
        mem.add_frame(frames[t], float(t))  # t = 11 completes a clip: the tail changes
    prefix = tiny.update_prefix(prefix, mem.segments())
    assert len(prefix.ends) == len(prefix.segment_ids) == len(mem.segments())
    cached = tiny.question_logits(prefix, [], "what is red?")
    full = tiny.full_logits(mem.segments(), [], "what is red?")
    assert float((cached - full).abs().max()) <= 1e-4
