"""Train the demo model: a small SmolVLM that answers questions about the built-in demo scene.

    python -m train.demo_model --out models/demo          # the shipped weights, ~25 min on 2 CPU cores

The model is a real ``SmolVLMForConditionalGeneration`` (SigLIP-style encoder, pixel-shuffle connector,
Llama decoder) with a byte-level BPE tokenizer built here, both saved the way hub models are, so
``--model demo`` loads them through ``from_pretrained`` like any other model. What it is trained on is
what livesight feeds it: frames rendered by :mod:`stream.demo` at 1 fps, encoded, laid out by the real
:class:`memory.hico.HiCoMemory` (native frames, clips, re-merged tiers) with the adapter's own time labels
and prompt, archived clips recalled after the memory, and the newest frame in detail when the question
asks for it. Questions and answers come from the scene's script (:mod:`train.scene`).

Two stages:

1. **Seeing** (encoder and decoder): short contexts of 1-4 frames, questions about the newest frame.
2. **Remembering** (decoder only, the encoder frozen): long runs through HiCo memory, every question
   kind, with recalled clips and detail frames as the engine adds them.

Reproducible: fixed seeds, one deterministic data order, a fixed torch thread count; running the command
again on the same torch version writes the same bytes (``MANIFEST.json`` holds their SHA-256, which a
test checks against the shipped files). Training scene times are the first 4.5 hours of the scene;
held-out evaluation (``bench/quality.py``) uses later times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DynamicCache, PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMForConditionalGeneration

from memory.hico import HiCoMemory
from memory.layout import HiCoSettings
from memory.segment import Segment
from models.context import Piece, Visual
from models.families.smolvlm import FAKE, GLOBAL, IMAGE, TOKENS, SmolVLMAdapter
from models.prompts import DETAIL, INTRO, RECALLED, SMOLVLM, clock, span_times, wall_clock
from models.registry import TINY_BUDGET
from stream.demo import render
from train.scene import KINDS, Asker, Question, Span, shows

SEED = 1234
THREADS = 2
FRAME = 64  # encoder input size
#: scene seconds training may render; evaluation uses later ones
TRAIN_SECONDS = int(4.5 * 3600)
UTC = timezone.utc

#: How often each kind is asked in stage 2 (weights).
KIND_WEIGHTS = {
    "star": 1.5,
    "lights": 1.5,
    "banner": 1.5,
    "colour": 0.3,
    "describe": 1.0,
    "time": 0.5,
    "past_seen": 1.0,
    "past_last": 1.0,
    "past_count": 1.0,
    "past_at": 1.5,
}
assert set(KIND_WEIGHTS) == set(KINDS)


# --- tokenizer and configuration ---------------------------------------------------------------------
def build_tokenizer(corpus: Sequence[str], vocab_size: int = 640) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus`` (digits kept one per token, so times read digit by digit),
    with SmolVLM's special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    special = list(TOKENS.special)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=TOKENS.eos, pad_token=TOKENS.pad)
    fast.add_special_tokens({"additional_special_tokens": [t for t in special if t not in (TOKENS.eos, TOKENS.pad)]})
    fast.chat_template = SMOLVLM.chat_template
    return fast


def demo_config(tokenizer: PreTrainedTokenizerFast) -> SmolVLMConfig:
    """64 px frames, 16 visual tokens per frame, a 4-layer 192-wide decoder."""
    return SmolVLMConfig(
        vision_config={
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": FRAME,
            "patch_size": 8,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 192,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "max_position_embeddings": 16384,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "vocab_size": len(tokenizer),
            "tie_word_embeddings": False,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|im_start|>"),
        },
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=False,
    )


# --- frames ------------------------------------------------------------------------------------------
class Frames:
    """The scene at whole seconds, rendered when first needed: ``[64, 64, 3]`` uint8 as the encoder is fed
    them."""

    def __init__(self) -> None:
        self._small: dict[int, np.ndarray] = {}

    def pixels(self, times: Sequence[int]) -> torch.Tensor:
        """``[F, 3, 64, 64]`` float32 normalised as :func:`models.preprocess.to_pixel_values` does."""
        for t in times:
            if t not in self._small:
                self._small[t] = cv2.resize(render(float(t)), (FRAME, FRAME), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(np.stack([self._small[t] for t in times])).float().div_(255.0).sub_(0.5).div_(0.5)
        return x.permute(0, 3, 1, 2).contiguous()


def encode(model: SmolVLMForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """``[F, 3, 64, 64]`` -> ``[F, 16, D]`` visual tokens, with gradients when enabled (the adapter's
    :meth:`~models.families.smolvlm.SmolVLMAdapter.encode` without ``inference_mode``)."""
    inner = model.model
    patches = FRAME // 8
    mask = torch.ones(len(pixels), patches, patches, dtype=torch.bool)
    hidden = inner.vision_model(pixel_values=pixels, patch_attention_mask=mask).last_hidden_state
    return inner.connector(hidden)


# --- one training example ------------------------------------------------------------------------------
@dataclass
class Batch:
    """Right-padded sequences: ``embeds [B, L, D]``, ``positions [B, L]``, ``targets [B, L]`` (-100 where
    nothing is predicted), ``mask [B, L]``."""

    embeds: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def _pad(rows: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], start: int = 0) -> Batch:
    length = max(int(e.shape[0]) for e, _, _ in rows)
    dim = int(rows[0][0].shape[1])
    embeds = torch.zeros(len(rows), length, dim)
    positions = torch.zeros(len(rows), length, dtype=torch.long)
    targets = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (e, p, t) in enumerate(rows):
        n = int(e.shape[0])
        embeds[i, :n] = e
        positions[i, :n] = p
        positions[i, n:] = p[-1] + 1 + torch.arange(length - n) if n else torch.arange(start, start + length - n)
        targets[i, :n] = t
        mask[i, :n] = 1
    return Batch(embeds, positions, targets, mask)


def _answer_rows(
    adapter: SmolVLMAdapter, extra: Sequence[Piece], question: Question, start: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What follows the memory for one question, from position ``start``: its extra pieces (recalled
    clips, the detail frame), the question as the chat format ends it, and the answer to predict."""
    prompt = adapter.assemble([*extra, adapter.suffix_text([], question.text)], start)
    ids = adapter.tokenize(question.answer + SMOLVLM.end_of_turn)
    answer = adapter.embed_ids(ids)
    n = prompt.length
    embeds = torch.cat([prompt.embeds[0], answer], dim=0)
    positions = torch.arange(start, start + n + len(ids))
    targets = torch.full((n + len(ids),), -100, dtype=torch.long)
    targets[n - 1 : n - 1 + len(ids)] = ids  # the logit at position i predicts token i + 1
    return embeds[:-1], positions[:-1], targets[:-1]


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


# --- stage 1: seeing ---------------------------------------------------------------------------------
def _labeler(rng: random.Random) -> tuple[Callable[[float], float | None], Callable[[float], str]]:
    """A stream's clock: half live (wall-clock labels from a random time of day), half files (stream
    time). Returns ``(stream second -> wall time or None, stream second -> label)``."""
    if rng.random() < 0.5:
        base = 1_796_083_200.0 + rng.randrange(0, 86400)  # a day in 2026, any time of it
        return (lambda t: base + t), (lambda t: wall_clock(base + t, UTC))
    return (lambda t: None), clock


def _span(segment: Segment, tz: Any = UTC) -> Span:
    a, b = span_times(segment, tz)
    return Span(segment.start, segment.end, a, b)


def seeing_step(
    adapter: SmolVLMAdapter, frames: Frames, rng: random.Random, contexts: int, per_context: int
) -> torch.Tensor:
    """Loss of one stage-1 batch: ``contexts`` short runs of 1-4 frames, questions about the newest."""
    kinds = ("star", "lights", "banner", "describe", "colour", "time", "past_seen", "past_at")
    rows = []
    for _ in range(contexts):
        n = rng.randint(1, 4)
        now = rng.randrange(n, TRAIN_SECONDS)
        times = list(range(now - n + 1, now + 1))
        wall, label = _labeler(rng)
        tokens = encode(adapter.model, frames.pixels(times))
        segs = [Segment.frame(i, float(t), tokens[i], wall=wall(t)) for i, t in enumerate(times)]
        pieces: list[Piece] = [adapter.head_text()]
        for seg in segs:
            pieces.extend(adapter.segment_pieces(seg))
        prefix = adapter.assemble(pieces, 0)
        asker = Asker([_span(s) for s in segs], float(now), label, float(times[0]))
        for _ in range(per_context):
            kind = rng.choice(kinds)
            q = asker.past_seen(rng, seconds=rng.choice([2, 3])) if kind == "past_seen" else None
            if kind == "past_at":
                q = asker.past_at(rng, t=float(rng.choice(times)))
            q = q or asker.ask(kind, rng)
            if q is None:
                continue
            e, p, t = _answer_rows(adapter, [], q, prefix.end)
            rows.append(
                (
                    torch.cat([prefix.embeds[0], e]),
                    torch.cat([prefix.positions[0], p]),
                    torch.cat([torch.full((prefix.length,), -100, dtype=torch.long), t]),
                )
            )
    batch = _pad(rows)
    out = adapter.model(
        inputs_embeds=batch.embeds, position_ids=batch.positions, attention_mask=batch.mask, use_cache=False
    )
    return _loss(out.logits, batch.targets)


# --- stage 2: remembering ----------------------------------------------------------------------------
@dataclass
class Moment:
    """A run's memory at one moment: what the question is asked against."""

    now: int
    start: int
    segments: tuple[Segment, ...]
    clips: list[Segment]  # every clip archived so far (the archive), oldest first
    wall: Callable[[float], float | None]
    label: Callable[[float], str]


@dataclass
class Run:
    """A stream from ``start`` for ``seconds``, through a real HiCo memory, with moments to ask at."""

    start: int
    seconds: int
    wall: Callable[[float], float | None]
    label: Callable[[float], str]
    moments: list[Moment] = field(default_factory=list)


def simulate(
    tokens: dict[int, torch.Tensor],
    settings: HiCoSettings,
    start: int,
    seconds: int,
    ask_at: set[int],
    rng: random.Random,
) -> list[Moment]:
    """Feed frames ``start .. start+seconds-1`` (``tokens[t]`` each) through HiCo memory; a
    :class:`Moment` at every stream second in ``ask_at``."""
    wall, label = _labeler(rng)
    memory = HiCoMemory(settings)
    clips: list[Segment] = []
    moments = []
    for t in range(start, start + seconds):
        clip = memory.add_frame(tokens[t], float(t), wall=wall(t))
        if clip is not None:
            clips.append(clip)
        if t in ask_at:
            moments.append(Moment(t, start, memory.segments(), list(clips), wall, label))
    return moments


def _recall_for(q: Question, m: Moment, rng: random.Random) -> list[Segment]:
    """Archived clips the engine would put after the memory for ``q``: for a time asked about that the
    memory holds only coarsely, the clips nearest it (``engine.recall``: a point in time); otherwise,
    sometimes, clips chosen by content from before the memory's clip-detail part."""
    detailed = [s for s in m.segments if s.tier <= 1]
    before = detailed[0].start if detailed else float("inf")
    older = [c for c in m.clips if c.end < before]
    if not older:
        return []
    if q.kind == "past_at" and q.asked_about < before:
        if rng.random() < 0.8:
            window = [c for c in older if abs((c.start + c.end) / 2 - q.asked_about) <= 60]
            window.sort(key=lambda c: abs((c.start + c.end) / 2 - q.asked_about))
            return sorted(window[:16], key=lambda c: c.start)
        return []
    if rng.random() < 0.35:
        k = rng.randint(1, min(16, len(older)))
        event = rng.choice(["star", "dark", "banner"])
        relevant = [c for c in older if any(shows(event, t) for t in range(int(c.start), int(c.end) + 1))]
        pool = relevant if relevant and rng.random() < 0.6 else older
        return sorted(rng.sample(pool, min(k, len(pool))), key=lambda c: c.start)
    return []


def _wants_detail(text: str) -> bool:
    from engine.engine import wants_detail

    return wants_detail(text)


def remembering_step(adapter: SmolVLMAdapter, moment: Moment, rng: random.Random, per_context: int) -> torch.Tensor:
    """Loss of ``per_context`` questions asked at one moment: the memory prefilled once (gradients flow
    through its cache), the questions after it as one batch."""
    pieces: list[Piece] = [adapter.head_text()]
    for seg in moment.segments:
        pieces.extend(adapter.segment_pieces(seg))
    prefix = adapter.assemble(pieces, 0)
    asker = Asker([_span(s) for s in moment.segments], float(moment.now), moment.label, float(moment.start))
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    while len(rows) < per_context:
        kind = rng.choices(kinds, weights)[0]
        if kind == "past_at":
            span = moment.now - moment.start + 1
            age = int(math.exp(rng.uniform(0.0, math.log(span + 1)))) - 1
            q: Question | None = asker.past_at(rng, t=float(moment.now - min(age, span - 1)))
        else:
            q = asker.ask(kind, rng)
        if q is None:
            continue
        recalled = _recall_for(q, moment, rng)
        detail = None
        if _wants_detail(q.text) or rng.random() < 0.1:
            detail = render(float(moment.now))
        with torch.no_grad():
            extra = [p.clone() if isinstance(p, torch.Tensor) else p for p in adapter.context_pieces(recalled, detail)]
        extra = [Visual(p.tokens.clone(), {}) if isinstance(p, Visual) else p for p in extra]
        rows.append(_answer_rows(adapter, extra, q, prefix.end))
    cache = DynamicCache()
    adapter.model(
        inputs_embeds=prefix.embeds, position_ids=prefix.positions, cache=cache, use_cache=True, logits_to_keep=1
    )
    cache.batch_repeat_interleave(len(rows))
    batch = _pad(rows, prefix.end)
    mask = torch.cat([torch.ones(len(rows), prefix.length, dtype=torch.long), batch.mask], dim=1)
    out = adapter.model(
        inputs_embeds=batch.embeds, position_ids=batch.positions, attention_mask=mask, cache=cache, use_cache=True
    )
    return _loss(out.logits, batch.targets)


# --- the whole run -----------------------------------------------------------------------------------
def corpus(rng: random.Random) -> list[str]:
    """Text the tokenizer is trained on: prompts, labels, questions and answers as training writes them."""
    texts = [INTRO, RECALLED, DETAIL, SMOLVLM.suffix([], ""), FAKE + GLOBAL]
    for _ in range(3000):
        now = rng.randrange(60, TRAIN_SECONDS)
        _, label = _labeler(rng)
        spans = [Span(float(t), float(t), label(t), label(t)) for t in range(now - 40, now + 1)]
        asker = Asker(spans, float(now), label, float(now - 600))
        q = asker.ask(rng.choice(KINDS), rng)
        if q is not None:
            texts += [q.text, q.answer]
        a, b = label(now - rng.randint(4, 4000)), label(now)
        texts += [f"\nFrame from {b}:", f"\n{rng.choice([4, 16, 64, 256, 1024])} frames from {a} to {b}:"]
    texts += [f"{FAKE}<row_{r}_col_{c}>" for r in range(1, 4) for c in range(1, 4)]
    return texts


def _schedule(step: int, total: int, peak: float, warmup: int = 30) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    out: Path,
    *,
    seeing_steps: int,
    remembering_steps: int,
    runs: int,
    run_seconds: int = 9000,
    log: Callable[[str], None],
) -> None:
    """Train and save the demo model (see the module doc); ``run_seconds`` is the longest stage-2 run."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    began = time.monotonic()

    tokenizer = build_tokenizer(corpus(random.Random(SEED + 1)))
    config = demo_config(tokenizer)
    model = SmolVLMForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    adapter = SmolVLMAdapter(model, tokenizer, "demo", default_budget=TINY_BUDGET)
    adapter.timezone = UTC
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}")

    frames = Frames()

    # Stage 1: seeing.
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    for step in range(seeing_steps):
        for g in opt.param_groups:
            g["lr"] = _schedule(step, seeing_steps, 2e-3)
        loss = seeing_step(adapter, frames, rng, contexts=12, per_context=3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == seeing_steps - 1:
            log(f"seeing {step + 1}/{seeing_steps} loss {loss.item():.3f} ({time.monotonic() - began:.0f} s)")

    # Stage 2: remembering, the encoder frozen: every frame the runs need encoded once.
    settings = HiCoSettings.fit(TINY_BUDGET, adapter.tokens_per_frame)
    per_run = max(1, remembering_steps // max(1, runs))
    plans = []
    for _ in range(runs):
        seconds = rng.randint(min(600, run_seconds // 2), min(run_seconds, TRAIN_SECONDS - 1))
        start = rng.randrange(0, TRAIN_SECONDS - seconds)
        # Moments spread over the run's length, a few in its first minutes (a memory still filling).
        ask_at = {start + rng.randrange(5, seconds) for _ in range(per_run - per_run // 8)}
        ask_at |= {start + rng.randrange(1, min(seconds, 300)) for _ in range(per_run // 8)}
        plans.append((start, seconds, ask_at))
    needed = sorted({t for start, seconds, _ in plans for t in range(start, start + seconds)})
    tokens: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(0, len(needed), 256):
            chunk = needed[i : i + 256]
            tokens.update(zip(chunk, encode(model, frames.pixels(chunk)), strict=True))
    moments: list[Moment] = []
    for start, seconds, ask_at in plans:
        moments += simulate(tokens, settings, start, seconds, ask_at, rng)
    rng.shuffle(moments)
    log(f"{len(moments)} moments from {runs} runs ({time.monotonic() - began:.0f} s)")
    lm = [p for n, p in model.named_parameters() if not n.startswith(("model.vision_model", "model.connector"))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lm:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lm, lr=1e-3, weight_decay=0.01)
    steps = min(remembering_steps, len(moments))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _schedule(step, steps, 1e-3)
        loss = remembering_step(adapter, moments[step], rng, per_context=8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm, 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"remembering {step + 1}/{steps} loss {loss.item():.3f} ({time.monotonic() - began:.0f} s)")

    save(model, tokenizer, out)
    log(f"saved to {out} ({time.monotonic() - began:.0f} s)")


def save(model: SmolVLMForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """The model directory as hub models have it, and ``MANIFEST.json``: every file's SHA-256."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    manifest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "demo")
    parser.add_argument("--seeing-steps", type=int, default=400)
    parser.add_argument("--remembering-steps", type=int, default=1100)
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--run-seconds", type=int, default=9000, help="the longest stage-2 run (stream seconds)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(
        args.out,
        seeing_steps=args.seeing_steps,
        remembering_steps=args.remembering_steps,
        runs=args.runs,
        run_seconds=args.run_seconds,
        log=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
