"""Answer quality under compression: the demo model on held-out demo-scene times, four memories side by side.

    python bench/quality.py --json [--plot docs/quality.png]      # ~10 min on 2 CPU cores
    python bench/quality.py --moments 6 --json                    # a quick look

One long stream of the demo scene at 1 fps, at scene times the demo model never trained on (from 5 h),
with a live camera's clock. Frames are encoded by the model once; the same frames then fill four memories
of the same visual-token budget (the model's default, 1,024):

- ``hico``: livesight's memory (:class:`memory.hico.HiCoMemory`) with recall from the archive of every
  clip, chosen as ``engine/recall.py`` chooses (a moment named in the question: the clips nearest it; no
  time words: the model ranks the clips older than the memory's clip detail), and the newest frame in
  detail when the question asks for it (``engine.engine.wants_detail``);
- ``uniform``: native frames subsampled evenly over the whole stream to the budget;
- ``recent``: the newest native frames that fit the budget (a recency window, StreamingVLM-style);
- ``full``: no compression: the newest native frames that fit the model's context window.

At each of ``--moments`` moments in the stream's last minutes every question kind of :mod:`train.scene` is
asked, and ``past_at`` questions about moments 5 s, 1 min, 5 min, 30 min and 2 h old. Answers are greedy and
graded against the scene's script. It is a 2-million-parameter model on a synthetic scene: the figures say
what survives each kind of compression, not how a real model does on real video.

Also measured for the archive: recall precision (a named moment's clip among those recalled; recalled
clips that show what a content question asks about) and the time to first token with and without recall.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.engine import wants_detail
from engine.timewords import TimeReader
from memory.hico import HiCoMemory, HiCoSettings
from memory.segment import Segment
from models.families.smolvlm import SmolVLMAdapter
from models.loader import choose_placement, load_model
from models.probe import relevance
from models.prompts import span_times, wall_clock
from stream.demo import render
from train.scene import KINDS, NO, YES, Asker, Question, Span, shows

UTC = timezone.utc
START = 5 * 3600  # the first held-out scene second (training renders the first 4.5 hours)
WALL0 = 1_796_126_400.0  # the camera's clock at scene second 0 (2026-12-01 12:00 UTC)
AGES = (5, 60, 300, 1800, 7200)
STRATEGIES = ("hico", "uniform", "recent", "full")
RESERVE = 1024  # positions left for the question and the answer (as the server does)


@dataclass
class Stream:
    """The held-out stream: every frame's tokens, the HiCo memory's states at the moments, the archive."""

    tokens: list[torch.Tensor]  # [16, D] per second from START
    hico: dict[int, tuple[Segment, ...]]  # moment -> the memory's segments
    clips: list[Segment]
    keys: list[torch.Tensor]


def wall(t: float) -> float:
    return WALL0 + t


def label(t: float) -> str:
    return wall_clock(wall(t), UTC)


def build(adapter: SmolVLMAdapter, seconds: int, moments: Sequence[int], log: Callable[[str], None]) -> Stream:
    settings = HiCoSettings.fit(adapter.default_budget, adapter.tokens_per_frame)
    memory = HiCoMemory(settings)
    tokens: list[torch.Tensor] = []
    states: dict[int, tuple[Segment, ...]] = {}
    clips: list[Segment] = []
    want = set(moments)
    began = time.monotonic()
    for i in range(0, seconds, 16):
        times = list(range(START + i, START + min(i + 16, seconds)))
        encoded = adapter.encode([render(float(t)) for t in times]).tokens
        for t, tok in zip(times, encoded, strict=True):
            tokens.append(tok)
            clip = memory.add_frame(tok, float(t), wall=wall(t))
            if clip is not None:
                clips.append(clip)
            if t in want:
                states[t] = memory.segments()
        if i % 1800 == 0:
            log(f"stream {i // 60} min of {seconds // 60} ({time.monotonic() - began:.0f} s)")
    keys = [adapter.recall_keys(c) for c in clips]
    return Stream(tokens, states, clips, keys)


def native(stream: Stream, t: int, seg_id: int) -> Segment:
    return Segment.frame(seg_id, float(t), stream.tokens[t - START], wall=wall(t))


def memory_of(strategy: str, stream: Stream, adapter: SmolVLMAdapter, now: int) -> tuple[Segment, ...]:
    """The segments a strategy holds at scene second ``now``."""
    if strategy == "hico":
        return stream.hico[now]
    per_frame = adapter.tokens_per_frame
    if strategy == "full":
        label_tokens = adapter.prefix_length([native(stream, now, 0)]) - adapter.prefix_length([])
        limit = ((adapter.max_positions or 16384) - RESERVE - adapter.prefix_length([])) // label_tokens
    else:
        limit = adapter.default_budget // per_frame
    seen = now - START + 1
    if strategy == "uniform" and seen > limit:
        picks = sorted({START + round(i * (seen - 1) / (limit - 1)) for i in range(limit)})
    else:
        picks = list(range(max(START, now - limit + 1), now + 1))
    return tuple(native(stream, t, i) for i, t in enumerate(picks))


def recall(
    adapter: SmolVLMAdapter, stream: Stream, segments: Sequence[Segment], q: Question, now: int, k: int
) -> tuple[list[Segment], str]:
    """The clips ``engine/recall.py`` would put after the memory for ``q`` (see the module doc)."""
    detailed = [s for s in segments if s.tier <= 1]
    held = [(s.start, s.end) for s in detailed]

    def is_held(c: Segment) -> bool:
        return any(a <= c.start and c.end <= b for a, b in held)

    window = TimeReader().window(q.text, datetime.fromtimestamp(wall(now), UTC))
    if window is not None:
        pool = [
            (i, c)
            for i, c in enumerate(stream.clips)
            if c.wall_start is not None
            and c.wall_end is not None
            and window.start <= c.wall_end
            and c.wall_start <= window.end
            and not is_held(c)
        ]
        if len(pool) > k and window.point is not None:
            point = window.point
            pool = sorted(pool, key=lambda p: abs(((p[1].wall_start or 0) + (p[1].wall_end or 0)) / 2 - point))[:k]
        elif len(pool) > k:
            pool = _ranked(adapter, stream, pool, q.text, k)
        return [c for _, c in sorted(pool, key=lambda p: p[1].start)], "time" if pool else ""
    before = detailed[0].start if detailed else float("inf")
    pool = [(i, c) for i, c in enumerate(stream.clips) if c.end < before and c.start <= now]
    if not pool:
        return [], ""
    pool = _ranked(adapter, stream, pool, q.text, k)
    return [c for _, c in sorted(pool, key=lambda p: p[1].start)], "content"


def _ranked(
    adapter: SmolVLMAdapter, stream: Stream, pool: list[tuple[int, Segment]], question: str, k: int
) -> list[tuple[int, Segment]]:
    queries = adapter.recall_queries(question)
    scored = sorted(pool, key=lambda p: relevance(queries, stream.keys[p[0]]), reverse=True)
    return scored[:k]


def answer(
    adapter: SmolVLMAdapter, prefix: Any, q: Question, recalled: Sequence[Segment], detail: Any
) -> tuple[str, float]:
    """The greedy answer and its time to first token (seconds)."""
    began = time.perf_counter()
    pieces = adapter.generate(prefix, [], q.text, 24, threading.Event(), recalled=recalled, detail=detail)
    text, first = "", None
    for piece in pieces:
        if first is None:
            first = time.perf_counter() - began
        text += piece
    return text, first if first is not None else time.perf_counter() - began


def questions_at(now: int, segments: Sequence[Segment], rng: random.Random) -> list[Question]:
    spans = [Span(s.start, s.end, *span_times(s, UTC)) for s in segments]
    asker = Asker(spans, float(now), label, float(START))
    out = []
    for kind in KINDS:
        if kind == "past_at":
            continue
        q = asker.ask(kind, rng)
        if q is not None:
            out.append(q)
    for age in AGES:
        event_q = asker.past_at(rng, t=float(now - age))
        out.append(Question(f"age_{age}", event_q.text, event_q.answer, event_q.check, event_q.asked_about))
    return out


def run(adapter: SmolVLMAdapter, moments_n: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(seed)
    seconds = max(AGES) + 600 + 60
    moments = sorted(START + seconds - 1 - rng.randrange(0, 600) for _ in range(moments_n))
    stream = build(adapter, seconds, moments, log)
    k = min(512, adapter.default_budget // 4) // adapter.tokens_per_frame
    right: dict[tuple[str, str], list[bool]] = defaultdict(list)
    # yes/no kinds also by the true answer: "no" is right 5 times in 6 for "is the star visible?"
    by_truth: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    ttft: dict[str, list[float]] = defaultdict(list)
    precision: dict[str, list[float]] = defaultdict(list)
    examples: list[dict[str, Any]] = []
    for m, now in enumerate(moments):
        qs = questions_at(now, stream.hico[now], rng)
        for strategy in STRATEGIES:
            segments = memory_of(strategy, stream, adapter, now)
            prefix = adapter.build_prefix(segments)
            for q in qs:
                recalled: list[Segment] = []
                reason = ""
                if strategy == "hico":
                    recalled, reason = recall(adapter, stream, segments, q, now, k)
                detail = render(float(now)) if strategy == "hico" and wants_detail(q.text) else None
                text, first = answer(adapter, prefix, q, recalled, detail)
                ok = q.check(text)
                right[(strategy, q.kind)].append(ok)
                if q.answer in (YES, NO):
                    by_truth[(strategy, q.kind, q.answer)].append(ok)
                if strategy == "hico":
                    _precision(precision, q, recalled, reason)
                    if recalled:
                        ttft["with_recall"].append(first)
                        _, bare = answer(adapter, prefix, q, [], detail)
                        ttft["without_recall"].append(bare)
                    if len(examples) < 40 and not ok:
                        examples.append({"now": label(now), "q": q.text, "want": q.answer, "got": text})
        log(f"moment {m + 1}/{len(moments)} at {label(now)}")
    table = {strategy: {kind: _rate(right[(strategy, kind)]) for kind in _kinds()} for strategy in STRATEGIES}
    counts = {kind: len(right[("hico", kind)]) for kind in _kinds()}
    balanced = {
        strategy: {kind: _balanced([by_truth[(strategy, kind, a)] for a in (YES, NO)]) for kind in _kinds()}
        for strategy in STRATEGIES
    }
    return {
        "model": adapter.model_id,
        "moments": len(moments),
        "questions_per_kind": counts,
        "accuracy": table,
        "balanced_accuracy": balanced,
        "now_accuracy_hico": _rate(
            [ok for kind in ("star", "lights", "banner", "colour") for ok in right[("hico", kind)]]
        ),
        "now_balanced_hico": _rate_mean([balanced["hico"][kind] for kind in ("star", "lights")]),
        "recall_precision_time": _mean(precision["time"]),
        "recall_precision_content": _mean(precision["content"]),
        "ttft_s_with_recall": _median(ttft["with_recall"]),
        "ttft_s_without_recall": _median(ttft["without_recall"]),
        "wrong_examples": examples,
    }


def _precision(out: dict[str, list[float]], q: Question, recalled: Sequence[Segment], reason: str) -> None:
    if not recalled:
        return
    if reason == "time":
        out["time"].append(float(any(c.start <= q.asked_about <= c.end for c in recalled)))
    elif reason == "content":
        event = next((e for e in ("star", "dark", "banner") if _mentions(q.text, e)), None)
        if event is not None:
            hits = [any(shows(event, t) for t in range(int(c.start), int(c.end) + 1)) for c in recalled]
            out["content"].append(sum(hits) / len(hits))


def _mentions(text: str, event: str) -> bool:
    words = {"star": ("star",), "dark": ("lights", "dark"), "banner": ("banner", "sign", "door")}[event]
    return any(w in text.lower() for w in words)


def _kinds() -> list[str]:
    return [k for k in KINDS if k != "past_at"] + [f"age_{a}" for a in AGES]


def _rate(xs: Sequence[bool]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def _balanced(groups: Sequence[Sequence[bool]]) -> float | None:
    """The mean of the accuracies on each true answer (0.5 for a model that always says one of them)."""
    rates = [sum(g) / len(g) for g in groups if g]
    return round(statistics.fmean(rates), 3) if len(rates) == len(groups) else None


def _rate_mean(xs: Sequence[float | None]) -> float | None:
    kept = [x for x in xs if x is not None]
    return round(statistics.fmean(kept), 3) if kept else None


def _mean(xs: Sequence[float]) -> float | None:
    return round(statistics.fmean(xs), 3) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ages = [f"age_{a}" for a in AGES]
    for strategy in STRATEGIES:
        ys = [result["balanced_accuracy"][strategy][a] for a in ages]
        ax.plot(range(len(ages)), [y if y is not None else float("nan") for y in ys], marker="o", label=strategy)
    ax.set_xticks(range(len(ages)), ["5 s", "1 min", "5 min", "30 min", "2 h"])
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("age of the moment asked about")
    ax.set_ylabel("balanced accuracy (0.5 = chance)")
    ax.set_title("Demo model, held-out scene times: what survives compression")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--moments", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--budget", type=int, help="visual tokens per memory (default: the model's own)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    adapter = load_model(args.model, choose_placement("cpu"))
    if not isinstance(adapter, SmolVLMAdapter):
        raise SystemExit("bench/quality.py grades the demo model (a SmolVLM)")
    adapter.timezone = UTC
    if args.budget:
        adapter.default_budget = args.budget

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    began = time.monotonic()
    result = run(adapter, args.moments, args.seed, log)
    result["wall_s"] = round(time.monotonic() - began, 1)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        for strategy in STRATEGIES:
            print(strategy, result["accuracy"][strategy])


if __name__ == "__main__":
    main()
