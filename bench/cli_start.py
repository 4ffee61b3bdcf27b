"""How fast client-side commands start: ``livesight ask --help``, ``livesight streams`` against no server
(and friends) against ``python -c pass``.

Client commands must never import torch or transformers: the ratio to a bare interpreter start, measured in
the same run (these machines are noisy), is the figure to watch. Prints a table and one JSON line.

    python bench/cli_start.py [--repeat 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLIENT = [sys.executable, "-m", "livesight.cli"]
NO_SERVER = ["--url", "ws://127.0.0.1:9/v1/ws", "--token", "x" * 12]
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "livesight --help": [sys.executable, "-m", "livesight.cli", "--help"],
    "livesight ask --help": [sys.executable, "-m", "livesight.cli", "ask", "--help"],
    "livesight serve --help": [sys.executable, "-m", "livesight.cli", "serve", "--help"],
    "livesight streams --help": [sys.executable, "-m", "livesight.cli", "streams", "--help"],
    "livesight status --help": [sys.executable, "-m", "livesight.cli", "status", "--help"],
    # Reaching a server that is not there: the whole client path, imports included, up to the connect.
    "livesight ask (no server)": [*CLIENT, "ask", *NO_SERVER, "--stream", "demo", "hi"],
    "livesight streams (no server)": [*CLIENT, "streams", *NO_SERVER],
    "livesight add (no server)": [*CLIENT, "add", "cam", "demo", *NO_SERVER],
    "livesight remove (no server)": [*CLIENT, "remove", "cam", *NO_SERVER],
    "livesight status --follow (no server)": [*CLIENT, "status", "--follow", *NO_SERVER],
    "livesight watch (no server)": [*CLIENT, "watch", "--stream", "demo", "a dog", *NO_SERVER],
    "livesight watches (no server)": [*CLIENT, "watches", *NO_SERVER],
    "livesight events (no server)": [*CLIENT, "events", "--since", "1h", *NO_SERVER],
}
HEAVY = ("torch", "transformers")


def timed(cmd: list[str], repeat: int) -> list[float]:
    root = Path(__file__).resolve().parents[1]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=root, capture_output=True, check=False)
        out.append(time.perf_counter() - t0)
    return out


def imports_heavy(cmd: list[str]) -> list[str]:
    """Which of torch/transformers the command's process imports (python -X importtime)."""
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=root, capture_output=True, text=True)
    loaded = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return [m for m in HEAVY if m in loaded]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10, help="runs per command (median reported; default 10)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    base = None
    for name, cmd in COMMANDS.items():
        times = timed(cmd, args.repeat)
        median = statistics.median(times)
        base = base or median
        rows.append(
            {
                "command": name,
                "median_ms": round(median * 1000, 1),
                "max_ms": round(max(times) * 1000, 1),
                "vs_python": round(median / base, 2),
                "imports": imports_heavy(cmd),
            }
        )
    if not args.json:
        print("| command | median ms | max ms | vs python -c pass | imports torch/transformers |")
        print("|---|---|---|---|---|")
        for r in rows:
            heavy = ", ".join(r["imports"]) or "no"
            print(f"| {r['command']} | {r['median_ms']} | {r['max_ms']} | {r['vs_python']} | {heavy} |")
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_1m": os.getloadavg()[0],
    }
    print(json.dumps({"bench": "cli_start", "machine": machine, "repeat": args.repeat, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
