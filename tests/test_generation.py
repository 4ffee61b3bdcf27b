"""models/generation.py: answers one token at a time, several at once — batched decoding gives each answer
the tokens it gets alone (every family), and an answer's fork of the prefix survives the prefix moving on."""

from __future__ import annotations

import threading

import pytest

from memory import HiCoMemory, HiCoSettings
from models.context import EmbeddingContext
from tests.families import FAMILIES, adapter, frames, segments

QUESTIONS = ("What is moving?", "Is it dark?", "Describe the scene in detail, please.")


def alone(ad: EmbeddingContext, prefix: object, question: str, n: int) -> list[int]:
    return list(ad.generate_ids(prefix, [], question, n, threading.Event()))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_batch_of_answers_gets_the_tokens_each_gets_alone(name: str) -> None:
    ad = adapter(name)
    ad_stops = ad.stop_token_ids
    ad.stop_token_ids = frozenset()  # random weights may stop at once: decode the full length
    try:
        a = ad.build_prefix(segments(ad, frames(3)))
        b = ad.build_prefix(segments(ad, frames(5, seed=3)))  # another stream: a longer prefix
        asks = [(a, QUESTIONS[0], 6), (a, QUESTIONS[1], 9), (b, QUESTIONS[2], 7)]
        expected = [alone(ad, p, q, n) for p, q, n in asks]
        gens = [ad.begin(p, [], q, n) for p, q, n in asks]
        while not all(g.done for g in gens):
            ad.decode(gens)  # answers finish at different steps: the batch shrinks
        assert [g.ids for g in gens] == expected
        assert [g.usage.completion for g in gens] == [6, 9, 7]
        assert all(g.usage.prompt is not None and g.usage.prompt > 0 for g in gens)
    finally:
        ad.stop_token_ids = ad_stops


def test_an_answer_goes_on_while_its_prefix_takes_new_frames(tiny: EmbeddingContext) -> None:
    tiny_stops, tiny.stop_token_ids = tiny.stop_token_ids, frozenset()
    try:
        mem = HiCoMemory(HiCoSettings.fit(1024, tiny.tokens_per_frame))
        enc = tiny.encode(frames(12))
        for i in range(6):
            mem.add_frame(enc.tokens[i], float(i))
        prefix = tiny.build_prefix(mem.segments())
        expected = alone(tiny, prefix, "What now?", 8)
        gen = tiny.begin(prefix, [], "What now?", 8)
        for i in range(6, 12):  # frames arrive mid-answer: the prefix is extended under it
            mem.add_frame(enc.tokens[i], float(i))
            prefix = tiny.update_prefix(prefix, mem.segments())
            tiny.decode([gen])
        while not gen.done:
            tiny.decode([gen])
        assert gen.ids == expected  # the answer saw the prefix it began on
        assert prefix.length > 0 and len(alone(tiny, prefix, "What now?", 8)) == 8  # and the prefix is whole
    finally:
        tiny.stop_token_ids = tiny_stops
