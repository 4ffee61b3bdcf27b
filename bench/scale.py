"""Many streams and many questions in one process: what interleaved, batched answering buys.

    python bench/scale.py --model tiny-random [--json] [--tokens 256] [--cameras 16,24,32,40]

- concurrent vs serial: 4 questions on 4 streams answered at once (stepped together, decoding batched)
  against the same 4 one after another (``max_active=1``), aggregate generated tokens per second, in the
  same run: ``concurrent_vs_serial_tokens_per_s`` is the ratio. Stop tokens are off so every answer is as
  long as asked (random weights may stop at once).
- ingest while answering: 8 demo streams at 1 fps at real pace while 4 answers of 512 tokens stream; the
  95th percentile of frames' capture-to-memory lag (``ingest_lag_p95_s_while_answering``), and without
  answers for comparison.
- cameras: N 1080p RTSP cameras at 1 fps (GStreamer's server, bench/ingest.py) through the engine with the
  tiny model; ``cameras_within_2s`` is the most with the lag's 95th percentile under 2 s. Run as a
  many-camera CPU server is configured (``serve --torch-threads 1``: ``--camera-threads``, default 1; 0
  keeps torch's choice, a third fewer cameras on 2 cores: docs/benchmarks.md).

The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.engine import Engine, EngineSettings, Question  # noqa: E402
from engine.events import FINAL, Answered, QuestionEvent  # noqa: E402
from engine.observer import NoObserver  # noqa: E402
from models.loader import choose_placement, load_model  # noqa: E402
from stream.factory import make_source  # noqa: E402
from stream.spec import parse_source  # noqa: E402


class Lags(NoObserver):
    """Frames' capture-to-memory lag, as the engine reports it."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    def frame_ingested(self, stream: str, lag_s: float) -> None:
        self.lags.append(lag_s)


def p95(xs: list[float]) -> float | None:
    return round(sorted(xs)[min(len(xs) - 1, int(0.95 * len(xs)))], 3) if xs else None


async def until_frames(engine: Engine, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while min((s.frames for s in engine.streams_info()), default=0) < n:
        if time.monotonic() > deadline:
            raise SystemExit("streams never got their first frames")
        await asyncio.sleep(0.05)


async def ask_all(engine: Engine, streams: list[str], tokens: int) -> list[Answered]:
    """One question per stream, all submitted at once; their final events."""
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[QuestionEvent]] = []
    for i, name in enumerate(streams):
        fut: asyncio.Future[QuestionEvent] = loop.create_future()
        done.append(fut)

        def reply(ev: QuestionEvent, fut: asyncio.Future[QuestionEvent] = fut) -> None:
            if isinstance(ev, FINAL) and not fut.done():
                fut.set_result(ev)

        q = Question(f"q{i}", name, f"Describe stream {name} in detail.", tokens, None, reply, time.time(), owner=i)
        engine.submit(q)
    events = await asyncio.gather(*done)
    out = []
    for ev in events:
        if not isinstance(ev, Answered):
            raise SystemExit(f"a question failed: {ev}")
        out.append(ev)
    return out


async def tokens_per_s(model: Any, max_active: int, tokens: int) -> float:
    """Aggregate tokens per second of 4 answers on 4 streams (lossless demo streams, so frames wait)."""
    names = ["a", "b", "c", "d"]
    settings = EngineSettings(fps=1.0, max_active=max_active)
    engine = Engine(model, settings, lambda spec, fps: make_source(spec, fps, lossless=False))
    await engine.start([parse_source(f"{n}=demo") for n in names])
    try:
        await until_frames(engine, 2)
        if max_active == 1:
            t0 = time.perf_counter()
            answers = []
            for name in names:  # one after another
                answers += await ask_all(engine, [name], tokens)
        else:
            t0 = time.perf_counter()
            answers = await ask_all(engine, names, tokens)
        elapsed = time.perf_counter() - t0
    finally:
        await engine.close()
    generated = sum(a.context.completion_tokens or 0 for a in answers)
    return generated / elapsed


async def lag_while_answering(model: Any, streams: int, answers: int, tokens: int, seconds: float) -> dict[str, Any]:
    lags = Lags()
    engine = Engine(model, EngineSettings(fps=1.0, max_active=answers), make_source, observer=lags)
    names = [f"s{i}" for i in range(streams)]
    await engine.start([parse_source(f"{n}=demo") for n in names])
    try:
        await until_frames(engine, 2)
        lags.lags.clear()
        await asyncio.sleep(seconds / 2)  # baseline: frames alone
        quiet, lags.lags = lags.lags, []
        busy_until = time.monotonic() + seconds / 2
        rounds = 0
        while time.monotonic() < busy_until:  # answers streaming all along
            await ask_all(engine, names[:answers], tokens)
            rounds += 1
        busy = lags.lags
    finally:
        await engine.close()
    return {
        "streams": streams,
        "answers_at_once": answers,
        "answer_tokens": tokens,
        "answer_rounds": rounds,
        "ingest_lag_p95_s_quiet": p95(quiet),
        "ingest_lag_p95_s_while_answering": p95(busy),
        "ingest_lag_max_s_while_answering": round(max(busy), 3) if busy else None,
        "frames_while_answering": len(busy),
    }


async def cameras(model: Any, counts: list[int], seconds: float) -> dict[str, Any]:
    from bench.ingest import engine_run

    rows, best = [], 0
    for n in counts:
        row = await engine_run(n, "auto", seconds, model)
        rows.append(row)
        ok = row["age_p95_s"] is not None and row["age_p95_s"] <= 2.0 and row["live"] == n
        if ok:
            best = n
        else:
            break
    return {"cameras_within_2s": best, "camera_rows": rows}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per answer for concurrent vs serial")
    ap.add_argument("--seconds", type=float, default=40.0, help="length of the ingest-while-answering run")
    ap.add_argument("--cameras", default="8,16,24,32,40", help="camera counts to try (empty: skip)")
    ap.add_argument("--camera-seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--camera-threads", type=int, default=1, help="torch CPU threads for the cameras part (0: as --threads)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, choose_placement("auto"))
    model.stop_token_ids = frozenset()  # type: ignore[attr-defined]  # full-length answers from random weights
    result: dict[str, Any] = {"bench": "scale", "model": args.model}
    serial = await tokens_per_s(model, 1, args.tokens)
    concurrent = await tokens_per_s(model, 4, args.tokens)
    result |= {
        "serial_tokens_per_s": round(serial, 1),
        "concurrent_tokens_per_s": round(concurrent, 1),
        "concurrent_vs_serial_tokens_per_s": round(concurrent / serial, 3),
    }
    if not args.json:
        print(json.dumps(result), flush=True)
    result |= await lag_while_answering(model, 8, 4, 512, args.seconds)
    if not args.json:
        print(json.dumps(result), flush=True)
    threads = torch.get_num_threads()  # what the answering parts ran with
    if args.cameras:
        counts = [int(c) for c in args.cameras.split(",") if c]
        if args.camera_threads:
            torch.set_num_threads(args.camera_threads)
        result |= await cameras(model, counts, args.camera_seconds)
        result["camera_torch_threads"] = torch.get_num_threads()
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": threads,
        "load_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
