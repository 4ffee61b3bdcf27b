"""The model path on the device under test, placed the way ``livesight serve`` places it.

The device is ``$LIVESIGHT_TEST_DEVICE``: ``cpu`` by default (every CI run), ``cuda`` when
``scripts/gpu-check`` runs these on a GPU (bf16, and flash-attention 2 when it is installed). Asking for
CUDA where torch sees none fails, never skips. Every family's tiny config, built on the device:

- a batch of answers decoded together gets the tokens each gets alone (in float32, where that is exact);
- in the serving dtype, batched decoding still agrees with decoding alone on the first token and keeps
  logits finite;
- every attention implementation installed gives the same next-token logits (within the dtype's error);
- the engine ingests a stream and answers a question on the device.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from dataclasses import replace

import pytest
import torch

from engine.engine import Engine, EngineSettings, Question
from engine.events import FINAL, Answered, QuestionEvent
from models.context import EmbeddingContext
from models.loader import Placement, build_random, choose_placement
from models.registry import family, model_types
from stream.spec import parse_source
from tests.families import frames, segments
from tests.support.server import source_factory, until

DEVICE = os.environ.get("LIVESIGHT_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def placement() -> Placement:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"LIVESIGHT_TEST_DEVICE={DEVICE} but torch sees no CUDA device (torch {torch.__version__})")
    return choose_placement(DEVICE)


def built(model_type: str, placement: Placement) -> EmbeddingContext:
    ad = build_random(family(model_type), "tiny", placement, model_id=f"tiny-random-{model_type}")
    assert isinstance(ad, EmbeddingContext)
    ad.stop_token_ids = frozenset()  # random weights may stop at once: decode the full length
    return ad


def attention_implementations(placement: Placement) -> list[str]:
    """What this device can run: eager and sdpa always, flash-attention 2 on CUDA when installed."""
    impls = ["eager", "sdpa"]
    if placement.device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.append("flash_attention_2")
    return impls


@pytest.mark.parametrize("model_type", model_types())
def test_batched_decoding_is_exact_in_float32(model_type: str, placement: Placement) -> None:
    ad = built(model_type, replace(placement, dtype=torch.float32, attn="sdpa"))
    a = ad.build_prefix(segments(ad, frames(3)))
    b = ad.build_prefix(segments(ad, frames(5, seed=3)))
    asks = [(a, "What is moving?", 6), (b, "Describe the scene in detail, please.", 9)]
    expected = [list(ad.generate_ids(p, [], q, n, threading.Event())) for p, q, n in asks]
    gens = [ad.begin(p, [], q, n) for p, q, n in asks]
    while not all(g.done for g in gens):
        ad.decode(gens)
    assert [g.ids for g in gens] == expected
    assert ad.device.type == placement.device.type


@pytest.mark.parametrize("model_type", model_types())
def test_the_serving_placement_decodes_in_batches(model_type: str, placement: Placement) -> None:
    ad = built(model_type, placement)
    prefix = ad.build_prefix(segments(ad, frames(3)))
    alone = ad.begin(prefix, [], "What is moving?", 4)
    gens = [ad.begin(prefix, [], "What is moving?", 4), ad.begin(prefix, [], "Is it dark?", 4)]
    assert gens[0].ids == alone.ids  # the same prefill, the same first token
    while not all(g.done for g in gens):
        ad.decode(gens)
    assert [len(g.ids) for g in gens] == [4, 4]
    vocab = ad.model.config.get_text_config().vocab_size
    assert all(0 <= t < vocab for g in gens for t in g.ids)


@pytest.mark.parametrize("model_type", model_types())
def test_attention_implementations_agree(model_type: str, placement: Placement) -> None:
    logits = {}
    for impl in attention_implementations(placement):
        ad = built(model_type, replace(placement, attn=impl))
        prefix = ad.build_prefix(segments(ad, frames(3)))
        logits[impl] = ad.question_logits(prefix, [], "What is moving?").float().cpu()  # [L, V]
        assert torch.isfinite(logits[impl]).all(), impl
    tol = 1e-4 if placement.dtype == torch.float32 else 5e-2
    ref = logits["eager"]
    for impl, got in logits.items():
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=tol * ref.abs().max().item(), rtol=0), impl


async def test_the_engine_answers_on_the_device(placement: Placement) -> None:
    ad = built(model_types()[0], placement)
    engine = Engine(ad, EngineSettings(fps=4.0), source_factory())
    await engine.start([parse_source("cam=demo")])
    done: asyncio.Future[QuestionEvent] = asyncio.get_running_loop().create_future()

    def reply(ev: QuestionEvent) -> None:
        if isinstance(ev, FINAL) and not done.done():
            done.set_result(ev)

    try:
        await until(lambda: sum(s.frames for s in engine.streams_info()) >= 3, 60, "frames on the device")
        engine.submit(Question("q", "cam", "What is happening?", 8, None, reply, time.time(), owner="t"))
        final = await asyncio.wait_for(done, 120)
    finally:
        await engine.close()
    assert isinstance(final, Answered), final
    assert final.context.completion_tokens == 8
