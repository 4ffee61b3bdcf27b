"""engine/budget.py: every family's default budget leaves room for questions once memory is full."""

from __future__ import annotations

import threading

import pytest

from engine.budget import RESERVE, fit_budget, full_memory, text_overhead
from errors import ConfigError, TooLarge
from memory import HiCoSettings
from models.context import EmbeddingContext
from models.loader import build_random, choose_placement
from models.registry import family, model_types


def at_real_size(model_type: str) -> EmbeddingContext:
    """The tiny model, told the real model's context window and default budget (what the fit depends on)."""
    spec = family(model_type)
    ad = build_random(spec, "tiny", choose_placement("cpu"))
    assert isinstance(ad, EmbeddingContext)
    ad.max_positions = int(spec.real_config(spec.tiny_tokenizer()).text_config.max_position_embeddings)
    ad.default_budget = spec.default_budget
    return ad


def answer_on_full_memory(ad: EmbeddingContext, settings: HiCoSettings, max_new_tokens: int = 128) -> str:
    segments = full_memory(ad, settings)
    prefix = ad.build_prefix(segments)
    question = "What happened at the door in the last hour, and who was there?"
    return "".join(ad.generate(prefix, [], question, max_new_tokens, threading.Event()))


@pytest.mark.parametrize("model_type", model_types())
def test_a_full_memory_at_the_default_budget_still_answers(model_type: str) -> None:
    ad = at_real_size(model_type)
    settings = fit_budget(ad, None)
    assert ad.max_positions is not None
    assert settings.max_tokens() + text_overhead(ad, settings) + RESERVE <= ad.max_positions
    answer_on_full_memory(ad, settings)  # raises TooLarge if the question does not fit


def test_the_unfitted_default_would_refuse_every_question() -> None:
    """LLaVA-NeXT-Video's 4,096 visual tokens in its 4,096-position window: the bug this fit removes."""
    ad = at_real_size("llava_next_video")
    unfitted = HiCoSettings.fit(ad.default_budget, ad.tokens_per_frame)
    with pytest.raises(TooLarge):
        answer_on_full_memory(ad, unfitted)
    assert fit_budget(ad, None).budget < ad.default_budget


def test_an_explicit_budget_is_kept_when_it_fits_and_refused_when_it_cannot() -> None:
    ad = at_real_size("llava_next_video")
    assert fit_budget(ad, 512).budget == 512
    with pytest.raises(ConfigError, match="context window"):
        fit_budget(ad, 4096)
