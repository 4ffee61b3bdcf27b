"""Simulate hours of a 1 fps stream through the HiCo memory and the model, as fast as the machine allows.

Frames are the built-in demo scene, encoded by the real model; after every frame the memory compresses
and the cached prefix is brought up to date, as the engine does. At checkpoints the same questions are
asked on the cached prefix and their time to first token measured; process RSS is read at the same
points. The last line printed is one JSON object (``--json``).

    python bench/memory.py --hours 2 --model tiny-random --json [--plot docs/hico_tiers.png]

Ratios, not absolute numbers, are the result: ``ttft_ms_late / ttft_ms_early`` (flat time to first token
however long the stream has run) and ``rss_mb_late / rss_mb_early`` (no growth with stream length).

``--layout-only`` simulates the memory alone (random tokens, no model) at ``--budget`` and
``--tokens-per-frame``:

    python bench/memory.py --layout-only --budget 4096 --tokens-per-frame 64 --hours 24 --json

Both report what keeping a cached prefix current costs: after every frame, the visual tokens from the first
segment that changed to the end (what ``update_prefix`` re-prefills), as ``reprefill_ratio`` (per frame, over
the second half of the run, divided by the native tokens a frame adds) and ``reprefill_worst_tokens``; the
context's span in stream seconds at the end (``context_span_s``) and at its shortest in the second half; and
how full the budget is on average in the second half (``utilisation``). With the model, the tokens actually
prefilled (labels included) too.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.hico import HiCoMemory, HiCoSettings
from memory.merge import merge_tokens
from memory.segment import Segment
from models.adapter import SupportsRecall
from stream.demo import render

WALL0 = 1_796_126_400.0  # the simulated camera's clock at stream time 0 (a fixed date, 12:00 UTC)
QUESTIONS = ("What is happening right now?", "When did the lights go off?", "Is anyone at the door?")
REPEATS = 5
ENCODE_BATCH = 4  # frames encoded together


def ttft_ms(adapter, prefix) -> float:
    """Time to first token: per question the fastest of ``REPEATS`` asks (robust to other processes taking
    the CPU for a moment), then the median over the questions."""
    best = []
    for q in QUESTIONS:
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            # One new token: the suffix prefill plus the first argmax, i.e. the time to first token.
            for _piece in adapter.generate(prefix, [], q, 1, threading.Event()):
                break
            times.append((time.perf_counter() - t0) * 1000)
        best.append(min(times))
    return statistics.median(best)


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def clip_cost_ms(native: int, dim: int, clip: int, per_frame: int, runs: int = 30) -> float:
    """Median ms to merge one clip of ``clip`` frames x ``native`` tokens of width ``dim`` to the target."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(clip * native, dim, generator=g)
    merge_tokens(x, clip * per_frame)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        merge_tokens(x, clip * per_frame)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class Reprefill:
    """Counts what a cached prefix re-prefills after each step: the tokens from the first segment whose id
    differs from the previous step's (``update_prefix`` crops there) to the end (``label_tokens`` more per
    segment for its text label); and the span and size of the context, from frame ``start`` on."""

    def __init__(self, start: int, label_tokens: int = 0) -> None:
        self.start = start
        self.label_tokens = label_tokens
        self.ids: list[int] = []
        self.costs: list[int] = []
        self.labelled: list[int] = []
        self.tokens: list[int] = []
        self.spans: list[float] = []

    def step(self, i: int, segments: Sequence[Segment], interval: float) -> None:
        ids = [s.id for s in segments]
        kept = next((k for k, (a, b) in enumerate(zip(self.ids, ids, strict=False)) if a != b), None)
        kept = min(len(ids), len(self.ids)) if kept is None else kept
        self.ids = ids
        if i >= self.start:
            cost = sum(s.num_tokens for s in segments[kept:])
            self.costs.append(cost)
            self.labelled.append(cost + self.label_tokens * (len(segments) - kept))
            self.tokens.append(sum(s.num_tokens for s in segments))
            self.spans.append(span_s(segments, interval))

    def report(self, native_tokens: int, budget: int) -> dict[str, float]:
        out = {
            "reprefill_ratio": round(statistics.fmean(self.costs) / native_tokens, 3),
            "reprefill_worst_tokens": max(self.costs),
            "context_span_min_s": min(self.spans),
            "utilisation": round(statistics.fmean(self.tokens) / budget, 3),
            "utilisation_min": round(min(self.tokens) / budget, 3),
        }
        if self.label_tokens:
            out["label_tokens"] = self.label_tokens
            out["reprefill_ratio_with_labels"] = round(statistics.fmean(self.labelled) / native_tokens, 3)
        return out


def span_s(segments: Sequence[Segment], interval: float) -> float:
    """Stream seconds the segments cover: from the first frame's time to one frame interval past the last."""
    return segments[-1].end - segments[0].start + interval if segments else 0.0


def layout_only(args: argparse.Namespace) -> None:
    """The memory alone: random tokens at ``--fps``, no model."""
    torch.set_num_threads(args.threads or 1)
    settings = HiCoSettings.fit(args.budget, args.tokens_per_frame)
    memory = HiCoMemory(settings)
    frames = int(args.hours * 3600 * args.fps)
    interval = 1 / args.fps
    count = Reprefill(frames // 2, args.label_tokens)
    g = torch.Generator().manual_seed(0)
    max_tokens = 0
    trace: list[tuple[float, list[int]]] = []
    started = time.perf_counter()
    for i in range(frames):
        t = i * interval
        memory.add_frame(torch.randn(args.tokens_per_frame, args.dim, generator=g), t)
        segments = memory.segments()
        count.step(i, segments, interval)
        max_tokens = max(max_tokens, sum(s.num_tokens for s in segments))
        if i % int(10 * args.fps) == 0:  # finer than tier 1's batches (about a minute apart)
            trace.append((t, [tier.tokens for tier in memory.stats().tiers]))
        if not args.json and i % int(3600 * args.fps) == 0:
            tokens = sum(s.num_tokens for s in segments)
            print(f"t={t / 3600:5.1f} h  tokens={tokens}  wall={time.perf_counter() - started:.1f} s", flush=True)
    result = {
        "mode": "layout-only",
        "budget": args.budget,
        "tokens_per_frame": args.tokens_per_frame,
        "max_tokens": max_tokens,
        "layout_max_tokens": settings.max_tokens(),
        "frames": frames,
        "stream_hours": args.hours,
        "context_span_s": span_s(memory.segments(), interval),
        **count.report(args.tokens_per_frame, args.budget),
        "reprefill_estimate": round(settings.reprefill_estimate(), 3),
        "steady_frames": settings.steady_frames(),
        **layout(settings),
        "long_term_records": memory.stats().long_term,
        "wall_s": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    if args.plot:
        plot(trace, args.plot, args.budget, [t.tokens_per_frame for t in settings.tiers])
        result["plot"] = str(args.plot)
    print(json.dumps(result))


def layout(settings: HiCoSettings) -> dict[str, object]:
    return {
        "clip_frames": settings.clip_frames,
        "recent_frames": settings.recent_frames,
        "tiers": [
            {
                "tokens_per_frame": t.tokens_per_frame,
                "frames_per_segment": t.frames,
                "tokens_per_segment": n,
                "keep": t.keep,
                "capacity": t.capacity,
            }
            for t, n in zip(settings.tiers, settings.segment_tokens(), strict=True)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--budget", type=int, help="in-context visual tokens (default: the model's)")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 180), metavar=("W", "H"), help="scene size")
    ap.add_argument("--every", type=float, default=600.0, help="seconds of stream time between late checkpoints")
    ap.add_argument("--plot", type=Path, help="write a PNG of tokens per tier over stream time")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print only the JSON result line")
    ap.add_argument("--layout-only", action="store_true", help="simulate the memory alone: random tokens, no model")
    ap.add_argument("--tokens-per-frame", type=int, default=64, help="native tokens per frame (--layout-only)")
    ap.add_argument("--dim", type=int, default=8, help="token width (--layout-only)")
    ap.add_argument(
        "--archive",
        action="store_true",
        help="also archive every clip (with recall keys) in a temporary SQLite archive: archive bytes per hour, "
        "and time to first token with recall against without (model runs only)",
    )
    ap.add_argument("--recall-tokens", type=int, default=256, help="recall budget for --archive (default 256)")
    ap.add_argument(
        "--label-tokens",
        type=int,
        default=16,
        help="text tokens assumed per segment label, for reprefill_ratio_with_labels (--layout-only)",
    )
    args = ap.parse_args()
    if args.layout_only:
        if args.budget is None:
            ap.error("--layout-only needs --budget")
        layout_only(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    # The model stack is imported only when a model runs.
    from models.loader import choose_placement, load_model

    adapter = load_model(args.model, choose_placement("cpu"))
    budget = args.budget or adapter.default_budget
    settings = HiCoSettings.fit(budget, adapter.tokens_per_frame)
    memory = HiCoMemory(settings)
    frames = int(args.hours * 3600 * args.fps)
    interval = 1 / args.fps
    count = Reprefill(frames // 2)
    # Every token the model prefills while the prefix is brought up to date, labels included.
    prefilled: list[int] = []
    updating = False
    forward = getattr(adapter, "forward")  # noqa: B009 (EmbeddingContext's, not the Protocol's)

    def counted(embeds: torch.Tensor, *rest: Any, **kw: Any) -> torch.Tensor:
        if updating:
            prefilled[-1] += int(embeds.shape[1])
        return forward(embeds, *rest, **kw)

    setattr(adapter, "forward", counted)  # noqa: B010 (an instance attribute over the method)
    archive = None
    if args.archive:
        from store.archive import Archive

        archive = Archive(Path(tempfile.mkdtemp(prefix="livesight-bench-")), model="bench", retain_s=None)
        archive.start()
    prefix = None
    max_tokens = 0
    update_ms: list[float] = []
    encode_ms: list[float] = []
    early: list[float] = []
    late: list[tuple[float, float]] = []
    rss_early: list[float] = []
    rss_late: list[tuple[float, float]] = []
    trace: list[tuple[float, list[int]]] = []
    last_t = (frames - 1) * interval
    # "Early" is the first minutes after the memory first evicts (its budget is as full as it gets from
    # then on); late checkpoints follow every --every seconds, and the last frame.
    checkpoints: list[float] = []
    started = time.perf_counter()

    def log(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    for first in range(0, frames, ENCODE_BATCH):
        batch = range(first, min(frames, first + ENCODE_BATCH))
        t0 = time.perf_counter()
        encoded = adapter.encode([render(i * interval, *args.size) for i in batch]).tokens
        encode_ms.append((time.perf_counter() - t0) * 1000 / len(batch))
        for j, i in enumerate(batch):
            t = i * interval
            clip = memory.add_frame(encoded[j], t, wall=WALL0 + t)
            if clip is not None and archive is not None:
                keys = adapter.recall_keys(clip) if isinstance(adapter, SupportsRecall) else None
                archive.put_clip("bench", clip, keys)
            t0 = time.perf_counter()
            segments = memory.segments()
            prefilled.append(0)
            updating = True
            prefix = adapter.update_prefix(prefix, segments)
            updating = False
            update_ms.append((time.perf_counter() - t0) * 1000)
            count.step(i, segments, interval)
            stats = memory.stats()
            max_tokens = max(max_tokens, stats.tokens)
            if i % int(60 * args.fps) == 0:
                trace.append((t, [tier.tokens for tier in stats.tiers]))
            if not checkpoints and stats.long_term:
                early_at = [t + k * 60.0 for k in range(1, 5)]
                steps = int((last_t - early_at[-1]) // args.every)
                checkpoints = [*early_at, *(early_at[-1] + k * args.every for k in range(1, steps + 1)), last_t]
            if checkpoints and t >= checkpoints[0]:
                checkpoints.pop(0)
                ms, mb = ttft_ms(adapter, prefix), rss_mb()
                if len(early) < 4:
                    early.append(ms)
                    rss_early.append(mb)
                else:
                    late.append((t, ms))
                    rss_late.append((t, mb))
                log(
                    f"t={t / 60:6.1f} min  tokens={stats.tokens:5d}  tiers={[x.tokens for x in stats.tiers]}  "
                    f"long_term={stats.long_term}  ttft={ms:6.1f} ms  rss={mb:7.1f} MB  "
                    f"wall={time.perf_counter() - started:6.1f} s"
                )
    if len(early) < 4 or not late:
        raise SystemExit(f"--hours {args.hours}: too short to fill the memory and measure after it (first eviction)")

    stats = memory.stats()
    last, last_rss = late[-1][1], rss_late[-1][1]  # the final checkpoint: the last frame
    ttft_early, rss_e = statistics.median(early), statistics.median(rss_early)
    half = prefilled[frames // 2 :]
    result = {
        "model": args.model,
        "tokens_per_frame": adapter.tokens_per_frame,
        "budget": budget,
        "max_tokens": max_tokens,
        "frames": frames,
        "stream_hours": args.hours,
        "context_span_s": span_s(memory.segments(), interval),
        **count.report(adapter.tokens_per_frame, budget),
        "reprefill_ratio_with_labels": round(statistics.fmean(half) / adapter.tokens_per_frame, 3),
        "reprefill_worst_tokens_with_labels": max(half),
        **layout(settings),
        "long_term_records": stats.long_term,
        "ttft_ms_early": round(ttft_early, 2),
        "ttft_ms_late": round(last, 2),
        "ttft_ratio": round(last / ttft_early, 3),
        "ttft_ms_checkpoints": {f"{t / 60:.0f}min": round(ms, 2) for t, ms in late},
        "rss_mb_early": round(rss_e, 1),
        "rss_mb_late": round(last_rss, 1),
        "rss_ratio": round(last_rss / rss_e, 3),
        "update_ms_p50": round(statistics.median(update_ms), 2),
        "update_ms_p99": round(statistics.quantiles(update_ms, n=100)[98], 2),
        "update_ms_max": round(max(update_ms), 2),
        "encode_ms_per_frame": round(statistics.median(encode_ms), 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        # HiCo's clip-level merge at SmolVLM2-256M sizes: 4 frames x 64 tokens x 576 wide -> 16 per frame.
        "clip_merge_ms_smolvlm2_256m": round(clip_cost_ms(64, 576, 4, 16), 3),
        "device": "cpu",
    }
    if archive is not None:
        assert prefix is not None
        archive.close()
        result |= recall_figures(adapter, archive, memory, prefix, settings, args, last_t)
    if args.plot:
        plot(trace, args.plot, budget, [t.tokens_per_frame for t in settings.tiers])
        result["plot"] = str(args.plot)
    print(json.dumps(result))


def recall_figures(
    adapter: Any, archive: Any, memory: HiCoMemory, prefix: Any, settings: HiCoSettings, args: Any, last_t: float
) -> dict[str, object]:
    """Archive bytes per hour of stream; time to first token with recall (choosing the clips included)
    against without, for a question about a moment half an hour back (by time) and one by content; and how
    many of the clips content recall chose show what was asked about (the demo scene's red banner)."""
    from datetime import datetime, timezone

    from engine.recall import AUTO, Recaller

    summary = archive.summary("bench")
    reader = archive.reader()
    recaller = Recaller(
        adapter, reader, budget=args.recall_tokens, clip_tokens=settings.tiers[0].tokens, tz=timezone.utc
    )
    now = WALL0 + last_t
    moment = datetime.fromtimestamp(now - 1800, timezone.utc).strftime("%H:%M:%S")
    questions = {"time": f"What happened at {moment}?", "content": "Was there a red banner reading PERSON AT DOOR?"}
    out: dict[str, object] = {
        "archive_bytes_per_hour": round(summary.bytes / args.hours),
        "archive_clips": summary.clips,
        "recall_tokens": args.recall_tokens,
    }
    cancel = threading.Event()
    for kind, question in questions.items():

        def first_token(with_recall: bool, q: str = question) -> float:
            t0 = time.perf_counter()
            recalled = recaller.choose("bench", q, AUTO, memory.segments(), now).segments if with_recall else ()
            for _piece in adapter.generate(prefix, [], q, 1, cancel, recalled=recalled):
                break
            return (time.perf_counter() - t0) * 1000

        with_ms = statistics.median(min(first_token(True) for _ in range(REPEATS)) for _ in range(3))
        without_ms = statistics.median(min(first_token(False) for _ in range(REPEATS)) for _ in range(3))
        chosen = recaller.choose("bench", question, AUTO, memory.segments(), now)
        out[f"recall_{kind}_clips"] = len(chosen.segments)
        out[f"ttft_ms_{kind}_with_recall"] = round(with_ms, 2)
        out[f"ttft_ms_{kind}_without_recall"] = round(without_ms, 2)
        out[f"ttft_{kind}_recall_ratio"] = round(with_ms / without_ms, 3)
        if kind == "content" and chosen.segments:
            from stream.demo import EVENTS, events_at

            banner = EVENTS[2].description
            shown = [any(banner in e.description for e in events_at(s.start)) for s in chosen.segments]
            out["recall_content_precision"] = round(sum(shown) / len(shown), 3)
            out["recall_content_chance"] = round((EVENTS[2].end - EVENTS[2].start) / 60.0, 3)
    reader.close()
    return out


def plot(trace: list[tuple[float, list[int]]], path: Path, budget: int, rates: Sequence[float] = ()) -> None:
    """A stacked area chart of tokens per tier over stream time, drawn with OpenCV (no plotting library)."""
    import cv2
    import numpy as np

    w, h, left, bottom, top, right = 900, 420, 70, 50, 40, 170
    img = np.full((h, w, 3), 255, np.uint8)
    colors = [  # BGR per tier
        (60, 60, 200),
        (60, 160, 60),
        (200, 140, 40),
        (150, 60, 150),
        (40, 170, 210),
        (160, 160, 60),
        (90, 90, 90),
    ]
    t_max = max(t for t, _ in trace) or 1.0
    pw, ph = w - left - right, h - top - bottom

    def xy(t: float, v: float) -> tuple[int, int]:
        return int(left + pw * t / t_max), int(top + ph * (1 - v / budget))

    n = len(trace[0][1])
    # Stack: oldest tier at the bottom, recent frames on top.
    order = list(range(n - 1, -1, -1))
    base = [0.0] * len(trace)
    for k in order:
        upper = [b + vals[k] for b, (_, vals) in zip(base, trace, strict=True)]
        pts = [xy(t, u) for (t, _), u in zip(trace, upper, strict=True)]
        pts += [xy(t, b) for (t, _), b in reversed(list(zip(trace, base, strict=True)))]
        cv2.fillPoly(img, [np.array(pts, np.int32)], colors[k % len(colors)])
        base = upper
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    y_budget = xy(0, budget)[1]
    cv2.line(img, (left, y_budget), (left + pw, y_budget), (0, 0, 0), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "in-context tokens per tier over stream time", (left, 25), font, 0.6, (0, 0, 0), 1)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = xy(t_max * frac, budget * frac)
        when = f"{t_max * frac / 3600:.1f} h" if t_max > 3 * 3600 else f"{t_max * frac / 60:.0f} min"
        cv2.putText(img, when, (x - 20, h - bottom + 20), font, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{budget * frac:.0f}", (10, y + 4), font, 0.4, (0, 0, 0), 1)
    for k in range(n):
        y = top + 20 + 22 * k
        cv2.rectangle(img, (w - right + 15, y - 10), (w - right + 30, y + 2), colors[k % len(colors)], -1)
        name = "native" if k == 0 else f"tier {k}"
        if 0 < k <= len(rates):
            r = rates[k - 1]
            name += f": {r:g}/frame" if r >= 1 else f": 1/{1 / r:g}/frame"
        cv2.putText(img, name, (w - right + 36, y), font, 0.45, (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


if __name__ == "__main__":
    main()
