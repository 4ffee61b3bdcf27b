"""Question-guided dropping of visual tokens during prefill (tiny real SmolVLM2)."""

from __future__ import annotations

import threading

import pytest
import torch

from memory.hico import HiCoMemory, HiCoSettings
from models.families.smolvlm import SmolVLMAdapter
from models.guided import GuidedAnswerer, GuidedSettings
from stream.demo import render

QUESTION = "when did the lights go off?"


@pytest.fixture(scope="module")
def memory(tiny: SmolVLMAdapter) -> HiCoMemory:
    mem = HiCoMemory(HiCoSettings.fit(480, tiny.tokens_per_frame))
    frames = tiny.encode([render(float(t), 128, 72) for t in range(40)]).tokens
    for t in range(40):
        mem.add_frame(frames[t], float(t))
    return mem


def test_keeping_everything_is_the_ordinary_forward_pass(tiny: SmolVLMAdapter, memory: HiCoMemory) -> None:
    segs = memory.segments()
    full = tiny.full_logits(segs, [], QUESTION)[-1]
    for mode in ("uniform", "attention"):
        state = GuidedAnswerer(tiny, GuidedSettings(mode, (1,), (1.0,))).prefill(segs, [], QUESTION)
        assert float((state.logits - full).abs().max()) <= 1e-4
    prefix = tiny.build_prefix(segs)
    plain = list(tiny.generate_ids(prefix, [], QUESTION, 6, threading.Event()))
    guided = GuidedAnswerer(tiny, GuidedSettings("uniform", (0,), (1.0,)))
    assert list(guided.generate_ids(segs, [], QUESTION, 6, threading.Event())) == plain


@pytest.mark.parametrize("mode", ["uniform", "attention"])
def test_cuts_the_visual_span_at_the_chosen_layer(tiny: SmolVLMAdapter, memory: HiCoMemory, mode: str) -> None:
    segs = memory.segments()
    n_visual = sum(s.num_tokens for s in segs)
    g = GuidedAnswerer(tiny, GuidedSettings(mode, (1,), (0.25,)))  # type: ignore[arg-type]
    state = g.prefill(segs, [], QUESTION)
    assert state.visual_kept == [n_visual, n_visual // 4]
    assert state.lengths[0] - state.lengths[1] == n_visual - n_visual // 4
    for i, layer in enumerate(state.cache.layers):
        assert layer.keys.shape[-2] == state.lengths[i]
    text_ids = list(g.generate_ids(segs, [], QUESTION, 3, threading.Event()))
    assert len(text_ids) <= 3


def test_attention_keeps_what_the_question_attends_to(tiny: SmolVLMAdapter, memory: HiCoMemory) -> None:
    """The kept set is the top of the scores the layer's own projections give, not an even spread."""
    segs = memory.segments()
    g = GuidedAnswerer(tiny, GuidedSettings("attention", (1,), (0.25,)))
    embeds, visual = g._prompt(segs, [], QUESTION)
    with torch.inference_mode():
        hidden = tiny.language_model()[0].layers[0](
            embeds.unsqueeze(0), attention_mask=None, position_embeddings=g._rope(embeds.unsqueeze(0), 0, len(embeds))
        )
        scores = g._scores(tiny.language_model()[0].layers[1], hidden, g._rope(hidden, 0, hidden.shape[1]))
    keep = g._select(visual, int(visual.sum()) // 4, scores)
    kept_vis = keep[visual[keep]]
    others = visual.nonzero().squeeze(1)
    others = others[~torch.isin(others, kept_vis)]
    assert float(scores[kept_vis].min()) >= float(scores[others].max())
    uniform = g._select(visual, int(visual.sum()) // 4, None)
    assert not torch.equal(keep, uniform)
    assert torch.equal(keep, torch.sort(keep).values)  # temporal order kept


def test_settings_are_checked(tiny: SmolVLMAdapter) -> None:
    with pytest.raises(ValueError, match="increase"):
        GuidedSettings("uniform", (1,), (1.5,))
    with pytest.raises(ValueError, match="one keep ratio"):
        GuidedSettings("uniform", (1, 2), (0.5,))
    with pytest.raises(ValueError, match="beyond"):
        GuidedAnswerer(tiny, GuidedSettings("uniform", (5,), (0.5,)))


def test_default_cuts_scale_with_depth() -> None:
    assert GuidedSettings.for_depth("attention", 28) == GuidedSettings("attention", (4, 18), (0.75, 0.25))
    assert GuidedSettings.for_depth("uniform", 30).layers == (4, 19)
    assert GuidedSettings.for_depth("uniform", 2) == GuidedSettings("uniform", (0, 1), (0.75, 0.25))
    assert GuidedSettings.for_depth("uniform", 1) == GuidedSettings("uniform", (0,), (0.25,))


def test_guided_text_matches_plain_text_when_nothing_is_dropped(tiny: SmolVLMAdapter, memory: HiCoMemory) -> None:
    segs = memory.segments()
    plain = "".join(tiny.generate(tiny.build_prefix(segs), [], QUESTION, 6, threading.Event()))
    guided = GuidedAnswerer(tiny, GuidedSettings("attention", (1,), (1.0,)))
    assert "".join(guided.generate(segs, [], QUESTION, 6, threading.Event())) == plain
