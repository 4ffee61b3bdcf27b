"""What abuse costs polite clients: one real server, polite askers, then the same askers beside abusers.

    python bench/abuse.py [--model tiny-random] [--seconds 60] [--json]

A real ``livesight serve`` runs in its own process (tiny model, one demo stream, no archive). Two polite
clients (from 127.0.0.1) ask one short question after another for ``--seconds``: first alone (the
baseline), then again while a separate process attacks from other loopback addresses:

- fuzzers (127.0.0.2): authenticated connections sending malformed JSON, unknown types, wrong field types,
  oversized and binary messages as fast as the server answers;
- hogs (127.0.0.3): connections that ask their maximum of long questions and never read a byte
  (the server cuts them off when their outbox fills; they reconnect and do it again);
- silent clients (127.0.0.4): websocket connections that never authenticate, and raw TCP connections
  that never finish the HTTP handshake, kept at the per-address limit;
- a connection flood (127.0.0.5): connections opened and dropped as fast as possible, most refused;
- password guessing (127.0.0.6): wrong tokens, until the address is locked out.

Reported: polite answers per minute and worst wait (ask to final answer) in each phase, their ratio
(abuse / baseline), polite refusals (should be 0), what the attackers got (refusals, cut-offs), and the
server's RSS, open file descriptors and threads before the attack and 15 s after it ended (they should
come back). The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-abuse-token-0123456789"
STREAM = "cam"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stats(pid: int) -> dict[str, Any]:
    """The server's resident memory (MiB), open file descriptors and threads, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def start_server(model: str, port: int, data: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, LIVESIGHT_TOKEN=TOKEN)
    cmd = [str(Path(sys.executable).parent / "livesight"), "serve", "--model", model, "--source", f"{STREAM}=demo"]
    cmd += ["--port", str(port), "--no-archive", "--data", data, "--log-level", "error"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server never became healthy")
        time.sleep(0.3)


async def authed(url: str, source: str) -> ClientConnection:
    ws = await connect(url, local_addr=(source, 0), compression=None, max_size=None, open_timeout=30)
    await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
    ready = json.loads(await ws.recv())
    if ready.get("type") != "ready":
        raise RuntimeError(f"not ready: {ready}")
    return ws


# --- polite clients ------------------------------------------------------------------------------


async def polite(url: str, seconds: float, who: int) -> dict[str, Any]:
    """Ask a short question, wait for the answer, repeat; waits (s) and refusals."""
    waits: list[float] = []
    refused: list[str] = []
    ws = await authed(url, "127.0.0.1")
    end = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < end:
            n += 1
            qid = f"p{who}-{n}"
            t0 = time.monotonic()
            ask = {"type": "ask", "id": qid, "stream": STREAM, "question": "What is happening?", "max_new_tokens": 24}
            await ws.send(json.dumps(ask))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") != qid:
                    continue
                if msg["type"] == "answer":
                    waits.append(time.monotonic() - t0)
                    break
                if msg["type"] == "error":
                    refused.append(msg["code"])
                    await asyncio.sleep(0.5)
                    break
    finally:
        await ws.close()
    return {"waits": waits, "refused": refused}


async def polite_phase(url: str, seconds: float, clients: int = 2) -> dict[str, Any]:
    runs = await asyncio.gather(*(polite(url, seconds, i) for i in range(clients)))
    waits = [w for r in runs for w in r["waits"]]
    waits.sort()
    return {
        "answers_per_min": round(len(waits) * 60 / seconds, 1),
        "wait_p50_s": round(waits[len(waits) // 2], 3) if waits else None,
        "wait_max_s": round(waits[-1], 3) if waits else None,
        "refused": [c for r in runs for c in r["refused"]],
    }


# --- attackers (in their own process, so they do not slow the polite clients' event loop) ---------

FUZZ = [
    b"{",
    b"not json at all",
    b'{"type": "ask"}',
    b'{"type": "ask", "id": 7, "stream": [], "question": null}',
    b'{"type": "warp_drive", "id": "x"}',
    b'{"type": "ask", "id": "x", "stream": "cam", "question": "q", "max_new_tokens": -5}',
    b'{"type": "ask", "id": "' + b"x" * 5000 + b'", "stream": "cam", "question": "q"}',
    b'{"type": "subscribe", "stream": "' + b"s" * 300 + b'"}',
    b'{"type": "cancel", "id": "nothing-here"}',
    b'{"type": "remove_stream", "id": "r", "name": "nope"}',
    json.dumps({"type": "ask", "id": "deep", "stream": "cam", "question": [[[[[[[[]]]]]]]]}).encode(),
    b'{"type": "auth", "token": "again"}',
    b"\x00\xff\xfe" * 100,
]


async def fuzzer(url: str, end: float, counts: dict[str, int]) -> None:
    while time.monotonic() < end:
        try:
            ws = await authed(url, "127.0.0.2")
            rng = random.Random()
            while time.monotonic() < end:
                kind = rng.randrange(10)
                if kind == 0:
                    await ws.send(rng.randbytes(rng.randrange(1, 4096)))  # binary frame
                elif kind == 1:
                    await ws.send("x" * 300_000)  # big but under the hard limit
                else:
                    await ws.send(rng.choice(FUZZ).decode("utf-8", "replace"))
                counts["fuzz_sent"] += 1
                try:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                except TimeoutError:
                    counts["fuzz_unanswered"] += 1
                    continue
                if reply.get("type") == "error":
                    counts["fuzz_errors"] += 1
        except (ConnectionClosed, OSError):
            counts["fuzz_closed"] += 1
            await asyncio.sleep(0.1)


async def hog(url: str, end: float, counts: dict[str, int]) -> None:
    """Asks four long questions and many requests for the stream list, never reading."""
    while time.monotonic() < end:
        try:
            ws = await authed(url, "127.0.0.3")
            for i in range(4):
                ask = {"type": "ask", "id": f"h{i}", "stream": STREAM, "question": "Everything?", "max_new_tokens": 512}
                await ws.send(json.dumps(ask))
            ws.transport.pause_reading()  # never read: the server's replies pile up
            while time.monotonic() < end:
                await ws.send('{"type": "streams"}')
                counts["hog_requests"] += 1
                await asyncio.sleep(0.002)
        except (ConnectionClosed, OSError):
            counts["hog_cut_off"] += 1
            await asyncio.sleep(0.2)


async def silent(url: str, port: int, end: float, counts: dict[str, int]) -> None:
    """Keep 8 websocket connections that never authenticate and 8 TCP connections that never speak."""
    held: list[Any] = []
    while time.monotonic() < end:
        held = [h for h in held if not _closed(h)]
        kinds = [type(h).__name__ for h in held]
        try:
            if kinds.count("ClientConnection") < 8:
                held.append(await connect(url, local_addr=("127.0.0.4", 0), open_timeout=30))
                counts["silent_ws_opened"] += 1
            elif kinds.count("socket") < 8:
                s = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.4", 0))
                s.setblocking(False)
                held.append(s)
                counts["silent_tcp_opened"] += 1
            else:
                await asyncio.sleep(0.5)
        except (InvalidStatus, OSError, TimeoutError):
            counts["silent_refused"] += 1
            await asyncio.sleep(0.5)
    for h in held:
        if isinstance(h, socket.socket):
            h.close()
        else:
            await h.close()


def _closed(h: Any) -> bool:
    if isinstance(h, socket.socket):
        try:
            return h.recv(1, socket.MSG_PEEK) == b""  # the server hung up
        except BlockingIOError:
            return False
        except OSError:
            return True
    return bool(h.state.name == "CLOSED")


async def flood(url: str, end: float, counts: dict[str, int]) -> None:
    async def one() -> None:
        try:
            ws = await connect(url, local_addr=("127.0.0.5", 0), open_timeout=10)
            counts["flood_accepted"] += 1
            await ws.close()
        except InvalidStatus:
            counts["flood_refused"] += 1
        except (OSError, TimeoutError, ConnectionClosed):
            counts["flood_failed"] += 1

    while time.monotonic() < end:
        await asyncio.gather(*(one() for _ in range(32)))


async def guesser(url: str, end: float, counts: dict[str, int]) -> None:
    while time.monotonic() < end:
        try:
            ws = await connect(url, local_addr=("127.0.0.6", 0), open_timeout=10)
            await ws.send(json.dumps({"type": "auth", "token": f"guess-{random.random()}"}))
            reply = json.loads(await ws.recv())
            counts["guess_" + reply.get("code", reply.get("type", "?"))] += 1
            await ws.close()
        except InvalidStatus as exc:
            counts[f"guess_http_{exc.response.status_code}"] += 1
        except (OSError, TimeoutError, ConnectionClosed):
            counts["guess_failed"] += 1
        await asyncio.sleep(0.01)


async def attack(url: str, port: int, seconds: float) -> dict[str, int]:
    from collections import Counter

    counts: Counter[str] = Counter()
    end = time.monotonic() + seconds
    await asyncio.gather(
        *(fuzzer(url, end, counts) for _ in range(4)),
        *(hog(url, end, counts) for _ in range(4)),
        silent(url, port, end, counts),
        flood(url, end, counts),
        guesser(url, end, counts),
    )
    return dict(counts)


def attacker(url: str, port: int, seconds: float, out: Any) -> None:
    out.put(asyncio.run(attack(url, port, seconds)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/ws"
    with tempfile.TemporaryDirectory() as data:
        server = start_server(args.model, port, data)
        try:
            await polite_phase(url, 5)  # warm up: the first prefill, the model's first steps
            baseline = await polite_phase(url, args.seconds)
            before = proc_stats(server.pid)
            ctx = mp.get_context("spawn")  # a fresh interpreter: no event loop or threads inherited
            results: mp.Queue[dict[str, int]] = ctx.Queue()
            attackers = ctx.Process(target=attacker, args=(url, port, args.seconds + 5, results), daemon=True)
            attackers.start()
            await asyncio.sleep(5)  # the attack in full swing before measuring
            during = proc_stats(server.pid)
            abused = await polite_phase(url, args.seconds)
            attack_counts = await asyncio.to_thread(results.get, True, args.seconds + 120)
            attackers.join(30)
            await asyncio.sleep(15)  # silent connections time out, cut-off clients are gone
            after = proc_stats(server.pid)
            alive = server.poll() is None
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    return {
        "bench": "abuse",
        "model": args.model,
        "seconds_per_phase": args.seconds,
        "baseline": baseline,
        "abuse": abused,
        "answers_per_min_abuse_vs_baseline": round(abused["answers_per_min"] / baseline["answers_per_min"], 3)
        if baseline["answers_per_min"]
        else None,
        "worst_wait_abuse_vs_baseline": round(abused["wait_max_s"] / baseline["wait_max_s"], 3)
        if baseline["wait_max_s"] and abused["wait_max_s"]
        else None,
        "polite_refused": len(baseline["refused"]) + len(abused["refused"]),
        "attack": attack_counts,
        "server_before": before,
        "server_during": during,
        "server_after": after,
        "server_alive": alive,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
    }
    if not args.json:
        for phase in ("baseline", "abuse"):
            print(phase, result[phase])
        print("attack", result["attack"])
        print("server", result["server_before"], "->", result["server_after"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
