"""Watches: how fast an alert arrives, whether it is right, what an evaluation costs, and how many
evaluations the one inference worker sustains.

    python bench/watch.py [latency] [cost] [throughput] [--model tiny-random] [--spells 3] [--every 1]
        [--fps 2] [--streams 1,2,4,8] [--watches 4] [--seconds 20] [--cost-frames 16] [--quick]

The model is the dark double of tests/support/dark.py around the chosen SmolVLM-family model (its own
encoder, cached prefix and a real yes/no prefill per evaluation; "dark" is read from the frames' mean
brightness), so precision and recall measure the pipeline — scheduling, hysteresis, delivery — not a
model's eyesight. Swap in the shipped demo model when it lands.

- latency: a real server (websocket + webhook to a loopback receiver) on a live demo scene shifted so the
  lights go off 5 s after the start, then every 60 s; ``--spells`` dark spells. Detection latency is from
  the scripted start of a dark spell (the scene's clock) to the alert arriving at a websocket client and at
  the webhook receiver: sampling (up to 1/fps), ingest, the wait for the next evaluation (up to
  ``--every``), the evaluation, delivery. Precision: alerts inside a dark spell (plus one period) over all
  alerts; recall: spells with an alert over spells.
- cost: seconds of the inference worker per evaluation (one short prefill on the cached prefix), on a
  memory of ``--cost-frames`` frames, against a one-token question on the same prefix.
- throughput: N live demo streams at ``--fps``, each with ``--watches`` watches due every ``--every``
  seconds, for ``--seconds``: evaluations per second done and dropped (the worker was behind), frames per
  second ingested.

The last line of output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.engine import EngineSettings  # noqa: E402
from engine.inference import Inference, Ingest  # noqa: E402
from engine.watches import WatchSpec  # noqa: E402
from memory import HiCoSettings  # noqa: E402
from models.families.smolvlm import SmolVLMAdapter  # noqa: E402
from models.loader import choose_placement, load_model  # noqa: E402
from stream import demo  # noqa: E402
from stream.frame import Frame  # noqa: E402
from stream.source import Source, SourceState, ThreadedSource  # noqa: E402
from stream.spec import SourceSpec  # noqa: E402
from tests.support.dark import DarkModel  # noqa: E402
from tests.support.receiver import receiving  # noqa: E402
from tests.support.server import TOKEN, running_server  # noqa: E402
from web.webhooks import Webhooks  # noqa: E402

#: The scene starts this far into its minute: the lights go off 4.75 s after the start, between two sampled
#: frames (at 2 fps), as a real event would.
OFFSET = 25.25
DARK = demo.EVENTS[1]


class ShiftedDemo(ThreadedSource):
    """The demo scene at real pace, started ``OFFSET`` seconds into its minute. Records the wall time of
    its start, so a dark spell's scripted start is known on the clock."""

    def __init__(self, name: str, fps: float) -> None:
        super().__init__(name, "demo", fps)
        self.wall_clock = True
        self.started_at: float | None = None

    def _run(self) -> None:
        start = time.monotonic()
        self.started_at = time.time()
        self.stats.state = SourceState.LIVE
        n = 0
        while not self._stop.is_set():
            pts = n / demo.NATIVE_FPS
            n += 1
            if not self._sampler.due(pts):
                continue
            if not self._sleep(start + pts - time.monotonic()):
                return
            self._emit(pts, demo.render(pts + OFFSET))


def dark_model(model: str) -> DarkModel:
    base = load_model(model, choose_placement("auto"))
    assert isinstance(base, SmolVLMAdapter), f"{model}: the dark double wraps SmolVLM-family models"
    return DarkModel(base.model, base.tokenizer, base.model_id, default_budget=base.default_budget)


def spells(duration: float) -> list[tuple[float, float]]:
    """Dark spells (start, end) in the shifted source's seconds within ``duration``."""
    out = []
    k = 0
    while (start := k * demo.CYCLE_S + DARK.start - OFFSET) < duration:
        if start >= 0:
            out.append((start, start + DARK.end - DARK.start))
        k += 1
    return out


# --- latency, precision, recall ----------------------------------------------------------------------------
async def latency(model: DarkModel, n_spells: int, every: float, fps: float) -> dict[str, Any]:
    sources: list[ShiftedDemo] = []

    def make(spec: SourceSpec, f: float) -> Source:
        src = ShiftedDemo(spec.name, f)
        sources.append(src)
        return src

    duration = DARK.start - OFFSET + (n_spells - 1) * demo.CYCLE_S + (DARK.end - DARK.start) + 2 * every
    watch = WatchSpec("cam", "the lights are off", every_s=every, cooldown_s=20.0, origin="config")
    ws_alerts: list[tuple[float, dict[str, Any]]] = []
    hook_alerts: list[tuple[float, dict[str, Any]]] = []
    from websockets.asyncio.client import connect

    with receiving() as receiver:
        original = receiver.server.RequestHandlerClass.do_POST  # type: ignore[attr-defined]

        def timed_post(handler: Any) -> None:
            n = len(receiver.bodies)
            original(handler)
            if len(receiver.bodies) > n and receiver.bodies[-1]["type"] == "alert":
                hook_alerts.append((time.time(), receiver.bodies[-1]))

        receiver.server.RequestHandlerClass.do_POST = timed_post  # type: ignore[attr-defined]
        async with running_server(model, EngineSettings(fps=fps), ("cam=demo",), make=make, watches=[watch]) as srv:
            hooks = Webhooks([receiver.url])
            hooks.start()
            srv.engine.listen(hooks.on_event)
            async with connect(srv.url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
                await ws.recv()
                await ws.send(json.dumps({"type": "subscribe", "stream": "cam"}))

                async def read() -> None:
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg["type"] == "alert":
                            ws_alerts.append((time.time(), msg))

                reader = asyncio.create_task(read())
                await asyncio.sleep(duration)
                reader.cancel()
            hooks.wait_idle(10)
            await asyncio.to_thread(hooks.close)
            evals = next(iter(srv.app.metrics.evaluation_seconds.collect())).samples
            cost = _histogram_mean(evals)
    started = sources[0].started_at
    assert started is not None
    windows = spells(duration)
    ws_lat, hook_lat, hits, good = [], [], 0, 0
    for _, msg in ws_alerts:
        good += any(s <= (msg["stream_time"] or 0) <= e + every for s, e in windows)
    for s, e in windows:
        mine = [t for t, m in ws_alerts if s <= (m["stream_time"] or 0) <= e + every]
        hooks_mine = [t for t, m in hook_alerts if s <= (m["stream_time"] or 0) <= e + every]
        if mine:
            hits += 1
            ws_lat.append(min(mine) - (started + s))
        if hooks_mine:
            hook_lat.append(min(hooks_mine) - (started + s))
    return {
        "spells": len(windows),
        "fps": fps,
        "every_s": every,
        "alerts": len(ws_alerts),
        "precision": good / len(ws_alerts) if ws_alerts else None,
        "recall": hits / len(windows) if windows else None,
        "websocket_latency_s": _stats(ws_lat),
        "webhook_latency_s": _stats(hook_lat),
        "evaluation_ms_mean": None if cost is None else round(cost * 1000, 2),
    }


def _histogram_mean(samples: list[Any]) -> float | None:
    total = next((s.value for s in samples if s.name.endswith("_sum")), None)
    count = next((s.value for s in samples if s.name.endswith("_count")), None)
    return None if not count or total is None else total / count


def _stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3), "min": round(min(xs), 3)}


# --- cost ----------------------------------------------------------------------------------------------
def cost(model: DarkModel, frames: int, repeats: int = 10) -> dict[str, Any]:
    """Seconds per evaluation on a memory of ``frames`` frames, against a one-token question."""
    from engine.budget import fit_budget

    settings: HiCoSettings = fit_budget(model, None)
    inf = Inference(model, settings, timezone=model.timezone, clock=time.time)
    for i in range(frames):
        image = demo.render(float(i))
        inf.ingest([Ingest(1, "cam", Frame("cam", i, float(i), time.time(), image), True)])
    inf.evaluate(1, "cam", "Is this true: the lights are off? Answer yes or no.")  # warm up
    evals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        inf.evaluate(1, "cam", "Is this true: the lights are off? Answer yes or no.")
        evals.append(time.perf_counter() - t0)
    from engine.answering import Ask

    asks = []
    for _ in range(max(3, repeats // 3)):
        t0 = time.perf_counter()
        answering, _first = inf.begin(Ask(1, "cam", "Are the lights off?", (), 1, threading.Event()))  # one token
        asks.append(time.perf_counter() - t0)
        answering.stop()
    mem = inf._stream(1)
    return {
        "frames": frames,
        "prefix_tokens": mem.prefix.length if mem.prefix is not None else None,
        "evaluation_ms": round(statistics.median(evals) * 1000, 2),
        "one_token_answer_ms": round(statistics.median(asks) * 1000, 2),
    }


# --- throughput ----------------------------------------------------------------------------------------
async def throughput(
    model: DarkModel, n: int, watches: int, every: float, fps: float, seconds: float
) -> dict[str, Any]:
    names = [f"s{i}" for i in range(n)]
    specs = [
        WatchSpec(name, f"the lights are off in view {k}", every_s=every, origin="config")
        for name in names
        for k in range(watches)
    ]
    async with running_server(model, EngineSettings(fps=fps), [f"{x}=demo" for x in names], watches=specs) as srv:
        await asyncio.sleep(3.0)  # warm up: memories filling
        before = srv.engine.watches(), {s.name: s.frames for s in srv.engine.streams_info()}
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        after = srv.engine.watches(), {s.name: s.frames for s in srv.engine.streams_info()}
    evals = sum(w.evaluations for w in after[0]) - sum(w.evaluations for w in before[0])
    dropped = sum(w.dropped for w in after[0]) - sum(w.dropped for w in before[0])
    frames = sum(after[1].values()) - sum(before[1].values())
    return {
        "streams": n,
        "watches": n * watches,
        "demanded_per_s": round(n * watches * min(fps, 1 / every), 2),
        "evaluations_per_s": round(evals / elapsed, 2),
        "dropped_per_s": round(dropped / elapsed, 2),
        "frames_per_s": round(frames / elapsed, 2),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["latency", "cost", "throughput"])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--spells", type=int, default=3)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--watches", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--cost-frames", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a smoke run: one spell, short throughput runs")
    ap.add_argument("--torch-threads", type=int)
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.quick:
        args.spells, args.seconds, args.streams, args.cost_frames = 1, 3.0, "1,2", 4
    model = dark_model(args.model)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "model": args.model,
    }
    if "cost" in args.what:
        out["cost"] = cost(model, args.cost_frames)
        print(json.dumps({"cost": out["cost"]}), flush=True)
    if "latency" in args.what:
        out["latency"] = await latency(model, args.spells, args.every, args.fps)
        print(json.dumps({"latency": out["latency"]}), flush=True)
    if "throughput" in args.what:
        rows = []
        for n in (int(x) for x in args.streams.split(",")):
            row = await throughput(model, n, args.watches, args.every, args.fps, args.seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
        out["throughput"] = rows
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
