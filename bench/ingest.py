"""RTSP ingest on this machine: CPU per 1080p30 camera, how many cameras fit, capture-to-memory latency.

    python bench/ingest.py [cpu] [streams] [latency] [--seconds 20] [--max-streams 16] [--torch-threads N]

The camera is GStreamer's RTSP server (tests/support/rtsp_server.py, Debian's python3) passing a
pre-encoded 1080p30 H.264 file through without re-encoding (keyframe every 30 frames), so the server
costs almost nothing and the CPU measured is livesight's own.

- cpu: one RtspSource sampling at 1 fps, consumer taking every frame, CPU time of this process over
  wall time (100% = one core). Baseline in the same run: full decoding (``decode="all"``); the ratio is
  what keyframes-only decoding (``decode="keyframes"``, what ``auto`` picks at 1 fps) saves.
- streams: N cameras through the real Engine with ``tiny-random`` at 1 fps, N = 1, 2, 4, ...; for each, the
  95th percentile and the worst age of the frames when their tokens reach memory. Stops once the 95th
  percentile passes 2 s (single spikes come from other processes on a shared machine). One server
  process per camera; their CPU is reported apart. Run for ``auto`` (keyframes only at 1 fps) and
  ``all`` (full decoding).
- latency: one camera through the Engine; age of each frame (now minus its capture time) when its
  tokens are in memory. Capture time follows the camera's clock from the first frame's arrival, so it
  leaves out the camera's own encode and network time before that first frame.

The last line of output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.engine import Engine, EngineSettings  # noqa: E402
from models.loader import choose_placement, load_model  # noqa: E402
from stream.factory import make_source  # noqa: E402
from stream.rtsp import DecodeMode, RtspSource  # noqa: E402
from stream.source import Source  # noqa: E402
from stream.spec import SourceSpec, parse_source  # noqa: E402
from tests.support.rtsp import RtspServer  # noqa: E402

MEDIA = Path("/tmp/livesight-bench-1080p30.mp4")


def media(seconds: int = 90) -> Path:
    """A 1080p30 H.264 file (keyframe every 30 frames), made once with ffmpeg."""
    if not MEDIA.exists():
        ffmpeg = shutil.which("ffmpeg")
        assert ffmpeg, "ffmpeg missing: run scripts/setup"
        tmp = MEDIA.with_suffix(".part.mp4")
        subprocess.run(
            [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
             "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30",
             "-pix_fmt", "yuv420p", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(MEDIA)
    return MEDIA


def camera() -> RtspServer:
    server = RtspServer(extra=("--file", str(media())))
    server.start()
    return server


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def cpu_of(mode: DecodeMode, seconds: float) -> dict[str, Any]:
    server = camera()
    source = RtspSource("cam", server.url, 1.0, decode=mode)
    frames = 0
    try:
        it = aiter(source)
        await anext(it)
        await asyncio.sleep(2)  # past the open and the first GOPs
        c0, w0 = cpu_seconds(), time.monotonic()
        end = w0 + seconds
        while time.monotonic() < end:
            await asyncio.wait_for(anext(it), timeout=10)
            frames += 1
        cpu = (cpu_seconds() - c0) / (time.monotonic() - w0)
    finally:
        await source.close()
        server.close()
    pct = round(100 * cpu, 1)
    return {"mode": mode, "cpu_core_pct": pct, "frames": frames, "keyframes_only": source.keyframes_only}


class TimedEngine(Engine):
    """The real engine, noting each frame's age (now - capture time) when its tokens are in memory."""

    ages: list[float]

    async def _ingest(self) -> None:
        batch = [s.pending for s in self._streams.values() if s.pending is not None]
        await super()._ingest()
        now = time.time()
        self.ages.extend(now - frame.captured_at for frame in batch)


async def engine_run(n: int, mode: DecodeMode, seconds: float, model: Any) -> dict[str, Any]:
    def factory(spec: SourceSpec, fps: float) -> Source:
        if spec.kind == "rtsp":
            return RtspSource(spec.name, spec.url, fps, decode=mode)
        return make_source(spec, fps)

    # One server per camera, as N real cameras would be (a shared file-backed media broke with several
    # clients joining at once).
    servers = [camera() for _ in range(n)]
    engine = TimedEngine(model, EngineSettings(fps=1.0, max_streams=max(16, n)), factory)
    engine.ages = []
    try:
        await engine.start([parse_source(f"cam{i}={server.url}") for i, server in enumerate(servers)])
        start = time.monotonic()
        while not all(s.state == "live" for s in engine.streams_info()):
            if time.monotonic() - start > 30:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # settle: every reader open and decoding
        engine.ages = []
        c0, w0 = cpu_seconds(), time.monotonic()
        procs = [psutil.Process(sv.proc.pid) for sv in servers if sv.proc]
        for proc in procs:  # starts the servers' CPU counters; read at the end
            proc.cpu_percent(None)
        await asyncio.sleep(seconds)
        cpu = (cpu_seconds() - c0) / (time.monotonic() - w0)
        ages = sorted(engine.ages)
        info = engine.streams_info()
        server_cpu = sum(proc.cpu_percent(None) for proc in procs)
    finally:
        await engine.close()
        for server in servers:
            server.close()
    p = (lambda q: round(ages[min(len(ages) - 1, int(q * len(ages)))], 3)) if ages else (lambda q: None)
    return {
        "streams": n,
        "mode": mode,
        "frames_per_s": round(len(ages) / seconds, 2),
        "age_p50_s": p(0.5),
        "age_p95_s": p(0.95),
        "age_max_s": round(ages[-1], 3) if ages else None,
        "live": sum(s.state == "live" for s in info),
        "cpu_core_pct": round(100 * cpu, 1),
        "servers_cpu_core_pct": round(server_cpu, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["cpu", "streams", "latency"])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-streams", type=int, default=16)
    ap.add_argument("--modes", default="auto,all")
    ap.add_argument(
        "--torch-threads", type=int, help="torch.set_num_threads before loading the model (default: torch's)"
    )
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "torch_threads": args.torch_threads or "default",
    }
    if "cpu" in args.what:
        full = await cpu_of("all", args.seconds)
        key = await cpu_of("keyframes", args.seconds)
        out["cpu"] = {"all": full, "keyframes": key, "ratio": round(key["cpu_core_pct"] / full["cpu_core_pct"], 3)}
        print(json.dumps(out["cpu"]), flush=True)
    model = load_model("tiny-random", choose_placement("cpu"))
    if "latency" in args.what:
        out["latency"] = await engine_run(1, "auto", max(args.seconds, 30), model)
        print(json.dumps(out["latency"]), flush=True)
    if "streams" in args.what:
        out["streams"] = []
        modes: list[DecodeMode] = [m for m in ("auto", "all", "keyframes") if m in args.modes.split(",")]
        for mode in modes:
            n = 1
            while n <= args.max_streams:
                row = await engine_run(n, mode, args.seconds, model)
                out["streams"].append(row)
                print(json.dumps(row), flush=True)
                if row["age_p95_s"] is None or row["age_p95_s"] > 2.0 or row["live"] < n:
                    break
                n = n * 2 if n < 4 else n + 4
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
