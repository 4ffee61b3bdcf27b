"""RTSP ingest on this machine: CPU per 1080p30 camera, how many cameras fit, capture-to-memory latency.

    python bench/ingest.py [cpu] [streams] [latency] [--seconds 20] [--max-streams 16] [--steps 24,28,32]
                           [--baseline] [--modes auto,all] [--torch-threads N]

The camera is GStreamer's RTSP server (tests/support/rtsp_server.py, Debian's python3) passing a
pre-encoded 1080p30 H.264 file through without re-encoding (keyframe every 30 frames), so the server
costs almost nothing and the CPU measured is livesight's own.

- cpu: one RtspSource sampling at 1 fps, consumer taking every frame, CPU time of this process over
  wall time (100% = one core). Baseline in the same run: full decoding (``decode="all"``); the ratio is
  what keyframes-only decoding (``decode="keyframes"``, what ``auto`` picks at 1 fps) saves. Then the
  reader as it was (the baseline reader, below) against the reader now, keyframes only: CPU, and the
  clock reads PyAV makes per frame, counted by wrapping the clock its container module reads (its read
  timeout is checked in an interrupt callback that takes the GIL for each one; the count comes from a
  separate run, so the wrapper's own cost is in no CPU figure). And the RGB conversion of a 1080p frame
  to 1280x720: a new scaling context per frame (PyAV's ``frame.to_ndarray``) against the stream's own.
- streams: N cameras through the real Engine with ``tiny-random`` at 1 fps, N = 1, 2, 4, 8, 12, ... (or
  ``--steps``); for each, the 95th percentile and the worst age of the frames when their tokens reach
  memory. Stops once the 95th percentile passes 2 s (single spikes come from other processes on a
  shared machine). One server process per camera; their CPU is reported apart. Run for ``auto``
  (keyframes only at 1 fps) and ``all`` (full decoding). Load-robust figures per row: CPU time per
  thread kind (readers, the inference thread, the event loop, native threads: FFmpeg's decoder and
  scaler threads, torch's), the readers' voluntary context switches (waits: for the GIL, for data),
  and how busy the whole machine was and with what (livesight, the camera servers, other jobs).
  ``--baseline`` also runs the reader as it was before the ingest work of issue 14 at every count, in
  the same run, alternating which goes first: reads bounded by PyAV's read timeout (the GIL-taking
  callback) and a new scaling context per frame.
- latency: one camera through the Engine; age of each frame (now minus its capture time) when its
  tokens are in memory. Capture time follows the camera's clock from the first frame's arrival, so it
  leaves out the camera's own encode and network time before that first frame.

The last line of output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from unittest import mock

import av
import av.container.core
import numpy as np
import psutil
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stream.picture  # noqa: E402
import stream.rtsp  # noqa: E402
from engine.engine import Engine, EngineSettings  # noqa: E402
from models.loader import choose_placement, load_model  # noqa: E402
from stream.factory import make_source  # noqa: E402
from stream.picture import MAX_SIDE, UPRIGHT, Orientation, Orienter, from_matrix, upright  # noqa: E402
from stream.rtsp import OPEN_OPTIONS, DecodeMode, RtspSource  # noqa: E402
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


class BaselineSource(RtspSource):
    """The reader as it was (main before issue 14's ingest work): reads bounded by PyAV's read timeout,
    which PyAV checks in an interrupt callback that takes the GIL, called by FFmpeg around every socket
    read; and, inside :func:`as_before`, a new scaling context for every frame. Two later changes stay in
    it: decoding in the reader's thread (measured apart: ~5% of the readers' CPU) and orientations read
    without a reference cycle (the old way grew the process by gigabytes: the ``memory`` part)."""

    def _open(self, url: str) -> Any:
        options = {**OPEN_OPTIONS, **self._transport.options()}
        return av.open(url, mode="r", options=options, timeout=(self._open_timeout, self._read_timeout))


def fresh_rgb(frame: av.VideoFrame, orient: Orientation = UPRIGHT, max_side: int = MAX_SIDE) -> np.ndarray:
    """``stream.picture.to_rgb`` as it was: ``frame.to_ndarray`` makes a new scaling context, with its own
    slice threads, for every frame."""
    scale = min(1.0, max_side / max(frame.width, frame.height))
    w, h = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
    image = frame.to_ndarray(format="rgb24", width=w, height=h)
    return image if orient == UPRIGHT else np.ascontiguousarray(upright(image, orient))


class FreshScaler(Orienter):
    """An :class:`Orienter` converting as :func:`fresh_rgb` does (the baseline)."""

    def rgb(self, frame: av.VideoFrame, max_side: int = MAX_SIDE) -> np.ndarray:
        return fresh_rgb(frame, self.current, max_side)


def cyclic_orientation(frame: av.VideoFrame) -> Orientation | None:
    """``stream.picture.orientation`` as it was: through ``frame.side_data``, which PyAV caches on the
    frame while it holds the frame (a reference cycle: the picture waits for the cyclic collector)."""
    # PyAV's stub types side_data as a TypedDict; at run time it is a mapping keyed by side-data type.
    side = cast(SideDataContainer, frame.side_data).get(SideDataType.DISPLAYMATRIX)
    return None if side is None else from_matrix(np.frombuffer(bytes(side), dtype="<i4")[:9])


@contextlib.contextmanager
def as_before(baseline: bool) -> Iterator[None]:
    """Readers started inside convert with a new scaling context per frame when ``baseline``."""
    if not baseline:
        yield
        return
    with mock.patch.object(stream.rtsp, "Orienter", FreshScaler):
        yield


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def cpu_of(mode: DecodeMode, seconds: float, baseline: bool = False, count_clock: bool = False) -> dict[str, Any]:
    """One camera's CPU (this process, 100% = one core); with ``count_clock``, PyAV's clock reads per frame
    instead (the wrapper that counts them costs CPU itself, so the two come from separate runs)."""
    server = camera()
    reads = [0]
    clock = time.monotonic

    class CountingTime:
        @staticmethod
        def monotonic() -> float:
            reads[0] += 1
            return clock()

    counting = mock.patch.object(av.container.core, "time", CountingTime) if count_clock else contextlib.nullcontext()
    with as_before(baseline), counting:
        source = (BaselineSource if baseline else RtspSource)("cam", server.url, 1.0, decode=mode)
        frames = 0
        try:
            it = aiter(source)
            await anext(it)
            await asyncio.sleep(2)  # past the open and the first GOPs
            c0, w0, r0, d0 = cpu_seconds(), time.monotonic(), reads[0], source.stats.frames
            end = w0 + seconds
            while time.monotonic() < end:
                await asyncio.wait_for(anext(it), timeout=10)
                frames += 1
            cpu = (cpu_seconds() - c0) / (time.monotonic() - w0)
            wall = time.monotonic() - w0
            decoded = source.stats.frames - d0
        finally:
            await source.close()
            server.close()
    row: dict[str, Any] = {"mode": mode, "reader": "baseline" if baseline else "now", "frames": frames}
    if count_clock:
        # Sampled frames at 1 fps, but the clock is read per packet (30 a second): per second of video.
        row["pyav_clock_reads_per_s"] = round((reads[0] - r0) / wall)
        row["sampled_frames"] = decoded
    else:
        row |= {"cpu_core_pct": round(100 * cpu, 1), "keyframes_only": source.keyframes_only}
    return row


async def memory_of(n: int, seconds: float, cyclic: bool) -> dict[str, Any]:
    """RSS of this process while ``n`` cameras are read (no engine, 1 fps), orientations read as before
    (``cyclic``: through ``frame.side_data``) or now: at the start, the highest seen, the end."""
    servers = [camera() for _ in range(n)]
    patch = mock.patch.object(stream.picture, "orientation", cyclic_orientation) if cyclic else contextlib.nullcontext()
    proc = psutil.Process()
    with patch:
        sources = [RtspSource(f"cam{i}", server.url, 1.0) for i, server in enumerate(servers)]

        async def consume(source: RtspSource) -> None:
            async for _ in source:
                pass

        tasks = [asyncio.create_task(consume(s), name=f"bench:{s.name}") for s in sources]
        try:
            await asyncio.sleep(3)  # every reader open
            start = peak = proc.memory_info().rss
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await asyncio.sleep(0.5)
                peak = max(peak, proc.memory_info().rss)
            last = proc.memory_info().rss
        finally:
            for source in sources:
                await source.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                server.close()
    mb = 1 / 1e6
    return {
        "cameras": n,
        "orientation": "frame.side_data (as before)" if cyclic else "own container (now)",
        "rss_start_mb": round(start * mb),
        "rss_peak_mb": round(peak * mb),
        "rss_end_mb": round(last * mb),
    }


def rss_guard(limit_gb: float) -> None:
    """Ends the benchmark (exit 3) if this process grows past ``limit_gb``: a machine shared with other
    jobs must not be taken down by a leak found here."""
    proc = psutil.Process()

    def watch() -> None:
        while True:
            rss = proc.memory_info().rss
            if rss > limit_gb * 1e9:
                print(json.dumps({"aborted": f"RSS {rss / 1e9:.1f} GB over --max-rss-gb {limit_gb}"}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, name="bench-rss-guard", daemon=True).start()


def conversion_ms(repeats: int = 3, n: int = 20) -> dict[str, float]:
    """Process CPU per 1080p keyframe converted to 1280x720 RGB (best of ``repeats``), both ways."""
    with av.open(str(media())) as container:
        vstream = container.streams.video[0]
        vstream.codec_context.skip_frame = "NONKEY"
        frames = []
        for frame in container.decode(vstream):
            frames.append(frame)
            if len(frames) == n:
                break
    own = Orienter()
    ways: dict[str, Callable[[av.VideoFrame], np.ndarray]] = {
        "new_context_per_frame_ms": fresh_rgb,
        "stream_context_ms": own.rgb,
    }
    out = {}
    for name, convert in ways.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            for frame in frames:
                convert(frame)
            best = min(best, (time.process_time() - t0) / len(frames))
        out[name] = round(1000 * best, 2)
    return out


def schedstat(tid: int) -> tuple[float, float]:
    """Seconds thread ``tid`` has run on a CPU, and waited runnable for one (Linux schedstat)."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        on_cpu, waiting, _ = f.read().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


TICK = os.sysconf("SC_CLK_TCK")


def thread_kind(name: str) -> str:
    if name.startswith("source:"):
        return "readers"
    if name.startswith("inference"):
        return "inference"
    return "event_loop" if name == "MainThread" else "other_python"


class Threads:
    """CPU seconds and voluntary context switches per thread kind, from /proc (Linux). Threads Python
    does not know (FFmpeg's decoder and scaler threads, torch's OpenMP workers) count as ``native``."""

    def __init__(self) -> None:
        self.cpu, self.switches, self.waits = self._read()
        self.machine = self._machine()
        self.wall = time.monotonic()

    @staticmethod
    def _read() -> tuple[dict[int, float], dict[int, int], dict[int, float]]:
        cpu, switches, waits = {}, {}, {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/self/task/{tid}/status") as f:
                    status = f.read()
                waits[int(tid)] = schedstat(int(tid))[1]
            except OSError:
                continue  # ended meanwhile
            cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
            switches[int(tid)] = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        return cpu, switches, waits

    @staticmethod
    def _machine() -> tuple[float, float, float, float]:
        """Ticks busy (all but idle and iowait), in interrupt handling (irq, softirq: loopback networking
        runs there, accounted to no process), stolen by the hypervisor, and all."""
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], ticks[5] + ticks[6], ticks[7], sum(ticks)

    def since(self, cameras: int) -> dict[str, Any]:
        cpu, switches, waits = self._read()
        busy, irq, steal, total = self._machine()
        ticks = max(1, total - self.machine[3])
        wall = time.monotonic() - self.wall
        kinds = {t.native_id: thread_kind(t.name) for t in threading.enumerate() if t.native_id is not None}
        by_kind: dict[str, float] = {}
        waiting: dict[str, float] = {}
        reader_switches = 0
        for tid, c in cpu.items():
            kind = kinds.get(tid, "native")
            by_kind[kind] = by_kind.get(kind, 0.0) + c - self.cpu.get(tid, 0.0)
            waiting[kind] = waiting.get(kind, 0.0) + waits[tid] - self.waits.get(tid, 0.0)
            if kind == "readers":
                reader_switches += switches[tid] - self.switches.get(tid, 0)
        cores = os.cpu_count() or 1
        return {
            "thread_cpu_core_pct": {k: round(100 * v / wall, 1) for k, v in sorted(by_kind.items())},
            # Runnable but not running: time the threads of a kind waited for a CPU (per cent of the wall).
            "thread_waiting_for_cpu_pct": {k: round(100 * v / wall, 1) for k, v in sorted(waiting.items())},
            "reader_switches_per_camera_s": round(reader_switches / wall / max(1, cameras)),
            "machine_busy_pct": round(100 * (busy - self.machine[0]) / ticks, 1),
            "machine_busy_core_pct": round(100 * cores * (busy - self.machine[0]) / ticks, 1),
            "interrupts_core_pct": round(100 * cores * (irq - self.machine[1]) / ticks, 1),
            "stolen_core_pct": round(100 * cores * (steal - self.machine[2]) / ticks, 1),
        }


class TimedEngine(Engine):
    """The real engine, noting each frame's age (now - capture time) when its tokens are in memory, and
    where the inference thread's time went during ingest batches: on a CPU, runnable but waiting for a CPU
    (other processes, other threads), or neither: blocked, which in a batch (no I/O) is waiting for the
    GIL, give or take the hops to and from the event loop."""

    ages: list[float]
    batches: dict[str, float]

    def reset(self) -> None:
        self.ages = []
        self.batches = {"wall_s": 0.0, "on_cpu_s": 0.0, "waiting_for_cpu_s": 0.0}

    async def _ingest(self) -> None:
        batch = [s.pending for s in self._streams.values() if s.pending is not None]
        tid = next((t.native_id for t in threading.enumerate() if t.name.startswith("inference")), None)
        before = schedstat(tid) if tid is not None else None
        t0 = time.perf_counter()
        await super()._ingest()
        now = time.time()
        self.ages.extend(now - frame.captured_at for frame in batch)
        if tid is None:  # the worker's thread starts with its first unit; time it from the next batch
            return
        after = schedstat(tid)
        self.batches["wall_s"] += time.perf_counter() - t0
        if before is not None:
            self.batches["on_cpu_s"] += after[0] - before[0]
            self.batches["waiting_for_cpu_s"] += after[1] - before[1]

    def batch_times(self) -> dict[str, float]:
        b = self.batches
        return {k: round(v, 2) for k, v in b.items()} | {
            "blocked_s": round(b["wall_s"] - b["on_cpu_s"] - b["waiting_for_cpu_s"], 2)
        }


async def engine_run(n: int, mode: DecodeMode, seconds: float, model: Any, baseline: bool = False) -> dict[str, Any]:
    """``n`` cameras through the engine for ``seconds`` (after they are live and a settle); ``baseline``:
    read by :class:`BaselineSource`."""
    reader = BaselineSource if baseline else RtspSource

    def factory(spec: SourceSpec, fps: float) -> Source:
        if spec.kind == "rtsp":
            return reader(spec.name, spec.url, fps, decode=mode)
        return make_source(spec, fps)

    # One server per camera, as N real cameras would be (a shared file-backed media broke with several
    # clients joining at once).
    servers = [camera() for _ in range(n)]
    engine = TimedEngine(model, EngineSettings(fps=1.0, max_streams=max(16, n)), factory)
    engine.reset()
    try:
        with as_before(baseline):  # readers start (and make their Orienter) inside
            await engine.start([parse_source(f"cam{i}={server.url}") for i, server in enumerate(servers)])
            start = time.monotonic()
            while not all(s.state == "live" for s in engine.streams_info()):
                if time.monotonic() - start > 30:
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # settle: every reader open and decoding
        engine.reset()
        c0, w0 = cpu_seconds(), time.monotonic()
        threads = Threads()
        procs = [psutil.Process(sv.proc.pid) for sv in servers if sv.proc]
        for proc in procs:  # starts the servers' CPU counters; read at the end
            proc.cpu_percent(None)
        await asyncio.sleep(seconds)
        cpu = (cpu_seconds() - c0) / (time.monotonic() - w0)
        server_cpu = sum(proc.cpu_percent(None) for proc in procs)
        per_thread = threads.since(n)
        ages = sorted(engine.ages)
        batches = engine.batch_times()
        rss = psutil.Process().memory_info().rss
        info = engine.streams_info()
    finally:
        await engine.close()
        for server in servers:
            server.close()
    p = (lambda q: round(ages[min(len(ages) - 1, int(q * len(ages)))], 3)) if ages else (lambda q: None)
    return {
        "streams": n,
        "mode": mode,
        "reader": "baseline" if baseline else "now",
        "frames_per_s": round(len(ages) / seconds, 2),
        "age_p50_s": p(0.5),
        "age_p95_s": p(0.95),
        "age_max_s": round(ages[-1], 3) if ages else None,
        "live": sum(s.state == "live" for s in info),
        "cpu_core_pct": round(100 * cpu, 1),
        "cpu_per_camera_pct": round(100 * cpu / n, 2),
        "servers_cpu_core_pct": round(server_cpu, 1),
        **per_thread,
        "others_cpu_core_pct": round(
            per_thread["machine_busy_core_pct"]
            - per_thread["interrupts_core_pct"]
            - per_thread["stolen_core_pct"]
            - 100 * cpu
            - server_cpu,
            1,
        ),
        "inference_batches": batches,
        "rss_mb": round(rss / 1e6),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def passed(row: dict[str, Any]) -> bool:
    return row["age_p95_s"] is not None and row["age_p95_s"] <= 2.0 and row["live"] == row["streams"]


def counts(max_streams: int) -> list[int]:
    """1, 2, 4, 8, 12, 16, ... up to ``max_streams``."""
    out, n = [], 1
    while n <= max_streams:
        out.append(n)
        n = n * 2 if n < 4 else n + 4
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["cpu", "memory", "streams", "latency"])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-streams", type=int, default=16)
    ap.add_argument("--steps", help="camera counts to try, e.g. 24,28,32,36,40 (default: 1, 2, 4, 8, 12, ...)")
    ap.add_argument("--baseline", action="store_true", help="the reader as it was too, at every count")
    ap.add_argument("--modes", default="auto,all")
    ap.add_argument("--memory-cameras", type=int, default=16, help="cameras for the memory part")
    ap.add_argument("--max-rss-gb", type=float, default=4.0, help="abort if this process grows past it")
    ap.add_argument(
        "--torch-threads", type=int, help="torch.set_num_threads before loading the model (default: torch's)"
    )
    args = ap.parse_args()
    rss_guard(args.max_rss_gb)
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
        before = await cpu_of("keyframes", args.seconds, baseline=True)
        reads = [await cpu_of("keyframes", 5, baseline=b, count_clock=True) for b in (True, False)]
        out["cpu"] = {
            "all": full,
            "keyframes": key,
            "ratio": round(key["cpu_core_pct"] / full["cpu_core_pct"], 3),
            "keyframes_baseline_reader": before,
            "reader_now_vs_baseline": round(key["cpu_core_pct"] / before["cpu_core_pct"], 3),
            "pyav_clock_reads": reads,
            "rgb_1080p_to_720p": conversion_ms(),
        }
        print(json.dumps(out["cpu"]), flush=True)
    if "memory" in args.what:
        out["memory"] = [await memory_of(args.memory_cameras, 10, cyclic) for cyclic in (False, True)]
        print(json.dumps(out["memory"]), flush=True)
    model = load_model("tiny-random", choose_placement("cpu"))
    if "latency" in args.what:
        out["latency"] = await engine_run(1, "auto", max(args.seconds, 30), model)
        print(json.dumps(out["latency"]), flush=True)
    if "streams" in args.what:
        out["streams"] = []
        modes: list[DecodeMode] = [m for m in ("auto", "all", "keyframes") if m in args.modes.split(",")]
        steps = [int(c) for c in args.steps.split(",") if c] if args.steps else counts(args.max_streams)
        for mode in modes:
            # Each reader goes on until it fails; with --baseline the two alternate which runs first.
            going = {False: True, True: args.baseline}
            for i, n in enumerate(steps):
                order = [b for b in ((False, True) if i % 2 == 0 else (True, False)) if going[b]]
                if not order:
                    break
                for baseline in order:
                    row = await engine_run(n, mode, args.seconds, model, baseline=baseline)
                    out["streams"].append(row)
                    print(json.dumps(row), flush=True)
                    going[baseline] = passed(row)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
