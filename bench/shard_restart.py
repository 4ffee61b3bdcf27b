"""How long a ``serve --ray`` shard takes to come back after its process is killed.

    python bench/shard_restart.py [--kills 5] [--shards 2] [--streams 4] [--fps 2] [--model tiny-random]
        [--device cpu] [--json]

A local Ray cluster (``--ray local``), ``--shards`` shard actors and ``--streams`` demo streams placed by
load, with an archive. Once every stream is live with clips archived, shard 1's process is killed with
SIGKILL, ``--kills`` times (each once the previous restart is over), and for each kill it reports:

- ``detect_s``: kill -> the gateway tells subscribers ``reconnecting`` (Ray reports the actor lost);
- ``reopen_s``: kill -> the restarted shard is open again (a new process, the model loaded, the streams
  started with their memories rebuilt from the archive);
- ``live_s``: kill -> every stream of that shard ``live`` again (its first new frame in memory).

The last line of output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.gateway import Gateway, open_gateway  # noqa: E402
from engine.build import EngineRecipe  # noqa: E402
from engine.engine import EngineSettings  # noqa: E402
from stream.spec import parse_source  # noqa: E402


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def one_kill(gateway: Gateway, victim: int) -> dict[str, float]:
    names = [n for n in gateway.stream_names() if gateway.shard_of(n) == victim]
    pid = gateway.shard_pids()[victim]
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    await until(lambda: gateway.stream_info(names[0]).state == "reconnecting", 60, "reconnecting")
    detect = time.monotonic() - killed
    await until(lambda: gateway.shard_pids()[victim] not in (None, pid), 120, "the shard open again")
    reopen = time.monotonic() - killed
    await until(lambda: all(gateway.stream_info(n).state == "live" for n in names), 120, "the streams live")
    live = time.monotonic() - killed
    restored = min(gateway.stream_info(n).restored_frames for n in names)
    return {"detect_s": round(detect, 2), "reopen_s": round(reopen, 2), "live_s": round(live, 2), "restored": restored}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="shard-restart-")
    recipe = EngineRecipe(
        model=args.model,
        settings=EngineSettings(fps=args.fps, ended_ttl_s=None),
        device=args.device,
        data_dir=data,
    )
    specs = [parse_source(f"cam{i}=demo") for i in range(args.streams)]
    started = time.monotonic()
    gateway = await open_gateway(recipe, specs, address="local", shards=args.shards)
    open_s = time.monotonic() - started
    try:
        await until(
            lambda: all(i.state == "live" and i.archive and i.archive.clips >= 2 for i in gateway.streams_info()),
            120,
            "clips archived",
        )
        runs = []
        for k in range(args.kills):
            runs.append(await one_kill(gateway, 1))
            print(f"kill {k + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        await gateway.close()
    live = [r["live_s"] for r in runs]
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU(s)",
        "model": args.model,
        "shards": args.shards,
        "streams": args.streams,
        "fps": args.fps,
        "open_s": round(open_s, 2),
        "runs": runs,
        "live_s_median": round(statistics.median(live), 2),
        "live_s_max": round(max(live), 2),
        "detect_s_median": round(statistics.median(r["detect_s"] for r in runs), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="only the JSON line")
    args = p.parse_args()
    if args.shards < 2 or args.streams < args.shards:
        p.error("at least 2 shards, and a stream for each")
    report = asyncio.run(run(args))
    if not args.json:
        print(
            f"{args.kills} kill(s) of shard 1 ({args.streams} streams on {args.shards} shards): live again after "
            f"{report['live_s_median']} s (median; max {report['live_s_max']} s), lost noticed after "
            f"{report['detect_s_median']} s"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
