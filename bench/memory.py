"""Simulate hours of a 1 fps stream through the HiCo memory and the model, as fast as the machine allows.

Frames are the built-in demo scene, encoded by the real model; after every frame the memory compresses
and the cached prefix is brought up to date, as the engine does. At checkpoints the same questions are
asked on the cached prefix and their time to first token measured; process RSS is read at the same
points. The last line printed is one JSON object (``--json``).

    python bench/memory.py --hours 2 --model tiny-random --json [--plot docs/hico_tiers.png]

Ratios, not absolute numbers, are the result: ``ttft_ms_late / ttft_ms_early`` (flat time to first token
however long the stream has run) and ``rss_mb_late / rss_mb_early`` (no growth with stream length).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.hico import HiCoMemory, HiCoSettings
from memory.merge import merge_tokens
from models.loader import choose_placement, load_model
from stream.demo import render

QUESTIONS = ("What is happening right now?", "When did the lights go off?", "Is anyone at the door?")
EARLY_S = (120.0, 180.0, 240.0, 300.0)  # checkpoints in the first minutes (the budget is full by then)
REPEATS = 5


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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = load_model(args.model, choose_placement("cpu"))
    budget = args.budget or adapter.default_budget
    settings = HiCoSettings.fit(budget, adapter.tokens_per_frame)
    memory = HiCoMemory(settings)
    frames = int(args.hours * 3600 * args.fps)
    clip = settings.clip_frames
    prefix = None
    max_tokens = 0
    update_ms: list[float] = []
    encode_ms: list[float] = []
    early: list[float] = []
    late: list[tuple[float, float]] = []
    rss_early: list[float] = []
    rss_late: list[tuple[float, float]] = []
    trace: list[tuple[float, list[int]]] = []
    last_t = (frames - 1) / args.fps
    every = [k * args.every for k in range(1, int(last_t // args.every) + 1)]
    checkpoints = sorted({*EARLY_S, *every, last_t})
    next_cp = 0
    started = time.perf_counter()

    def log(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    for first in range(0, frames, clip):
        batch = range(first, min(frames, first + clip))
        t0 = time.perf_counter()
        encoded = adapter.encode([render(i / args.fps, *args.size) for i in batch]).tokens
        encode_ms.append((time.perf_counter() - t0) * 1000 / len(batch))
        for j, i in enumerate(batch):
            t = i / args.fps
            memory.add_frame(encoded[j], t)
            t0 = time.perf_counter()
            prefix = adapter.update_prefix(prefix, memory.segments())
            update_ms.append((time.perf_counter() - t0) * 1000)
            stats = memory.stats()
            max_tokens = max(max_tokens, stats.tokens)
            if i % int(60 * args.fps) == 0:
                trace.append((t, [tier.tokens for tier in stats.tiers]))
            if next_cp < len(checkpoints) and t >= checkpoints[next_cp]:
                cp = checkpoints[next_cp]
                next_cp += 1
                ms, mb = ttft_ms(adapter, prefix), rss_mb()
                if cp in EARLY_S:
                    early.append(ms)
                    rss_early.append(mb)
                if cp not in EARLY_S or cp == last_t:
                    late.append((t, ms))
                    rss_late.append((t, mb))
                log(
                    f"t={t / 60:6.1f} min  tokens={stats.tokens:5d}  tiers={[x.tokens for x in stats.tiers]}  "
                    f"long_term={stats.long_term}  ttft={ms:6.1f} ms  rss={mb:7.1f} MB  "
                    f"wall={time.perf_counter() - started:6.1f} s"
                )

    stats = memory.stats()
    last, last_rss = late[-1][1], rss_late[-1][1]  # the final checkpoint: the last frame
    ttft_early, rss_e = statistics.median(early), statistics.median(rss_early)
    result = {
        "model": args.model,
        "tokens_per_frame": adapter.tokens_per_frame,
        "budget": budget,
        "max_tokens": max_tokens,
        "frames": frames,
        "stream_hours": args.hours,
        "tiers": [{"tokens_per_frame": t.tokens_per_frame, "capacity": t.capacity} for t in settings.tiers],
        "recent_frames": settings.recent_frames,
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
    if args.plot:
        plot(trace, args.plot, budget)
        result["plot"] = str(args.plot)
    print(json.dumps(result))


def plot(trace: list[tuple[float, list[int]]], path: Path, budget: int) -> None:
    """A stacked area chart of tokens per tier over stream time, drawn with OpenCV (no plotting library)."""
    import cv2
    import numpy as np

    w, h, left, bottom, top, right = 900, 420, 70, 50, 40, 170
    img = np.full((h, w, 3), 255, np.uint8)
    colors = [(60, 60, 200), (60, 160, 60), (200, 140, 40), (150, 60, 150), (90, 90, 90)]  # BGR per tier
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
        cv2.putText(img, f"{t_max * frac / 60:.0f} min", (x - 20, h - bottom + 20), font, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{budget * frac:.0f}", (10, y + 4), font, 0.4, (0, 0, 0), 1)
    names = ["recent (native)", "tier 1: clips", "tier 2", "tier 3", "tier 4"]
    for k in range(n):
        y = top + 20 + 22 * k
        cv2.rectangle(img, (w - right + 15, y - 10), (w - right + 30, y + 2), colors[k % len(colors)], -1)
        cv2.putText(img, names[k] if k < len(names) else f"tier {k}", (w - right + 36, y), font, 0.45, (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


if __name__ == "__main__":
    main()
