"""Model-side speed and memory on this machine: encode, time to first token, decode rate, peak RSS.

    python bench/model.py --model tiny-random --model random-smolvlm2-256m [--context 1024] [--json]

Each model runs in its own process so peak RSS is its own. Time to first token (TTFT) is measured on the
cached visual prefix (how livesight answers) and, as the same-run baseline, with a full recompute of
the whole context (what a server without prefix reuse pays); the ratio is what prefix caching buys.
The last line of output is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(model_id: str, context_tokens: int, repeats: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from memory import RollingMemory
    from models.families.smolvlm import SmolVLMAdapter
    from models.loader import choose_placement, load_model
    from stream.demo import render

    torch.manual_seed(0)
    placement = choose_placement("cpu")
    t0 = time.perf_counter()
    adapter = load_model(model_id, placement)
    load_s = time.perf_counter() - t0
    assert isinstance(adapter, SmolVLMAdapter)
    n_frames = max(1, context_tokens // adapter.tokens_per_frame)
    images = [render(i * 1.0) for i in range(n_frames)]

    adapter.encode(images[:1])  # warm-up
    encode_ms = []
    tokens = []
    for img in images:
        t = time.perf_counter()
        tokens.append(adapter.encode([img]).tokens[0])
        encode_ms.append((time.perf_counter() - t) * 1000)

    mem = RollingMemory(budget=n_frames * adapter.tokens_per_frame)
    for i, tok in enumerate(tokens):
        mem.add_frame(tok, float(i))
    segments = mem.segments()
    t = time.perf_counter()
    prefix = adapter.build_prefix(segments)
    prefill_ms = (time.perf_counter() - t) * 1000

    question = "What happened in the last ten seconds?"
    cancel = threading.Event()

    def first_token_ms() -> float:
        t = time.perf_counter()
        next(iter(adapter.generate_ids(prefix, [], question, 1, cancel)))
        return (time.perf_counter() - t) * 1000

    def recompute_first_token_ms() -> float:
        t = time.perf_counter()
        fresh = adapter.build_prefix(segments)
        next(iter(adapter.generate_ids(fresh, [], question, 1, cancel)))
        return (time.perf_counter() - t) * 1000

    first_token_ms()  # warm-up
    ttft = statistics.median(first_token_ms() for _ in range(repeats))
    ttft_recompute = statistics.median(recompute_first_token_ms() for _ in range(max(1, repeats // 2)))

    # Decode rate: a fixed number of tokens, stop tokens ignored so every run decodes the same count.
    stops = adapter.stop_token_ids
    adapter.stop_token_ids = frozenset()
    t = time.perf_counter()
    n = sum(1 for _ in adapter.generate_ids(prefix, [], question, new_tokens, cancel))
    decode_s = time.perf_counter() - t
    adapter.stop_token_ids = stops

    return {
        "model": model_id,
        "tokens_per_frame": adapter.tokens_per_frame,
        "context_frames": n_frames,
        "context_tokens": prefix.length,
        "load_s": round(load_s, 2),
        "encode_ms_per_frame": round(statistics.median(encode_ms), 2),
        "prefill_ms": round(prefill_ms, 1),
        "ttft_ms": round(ttft, 2),
        "ttft_recompute_ms": round(ttft_recompute, 2),
        "ttft_speedup": round(ttft_recompute / ttft, 1),
        "decode_tokens_per_s": round(n / decode_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="model id (repeatable); default: tiny-random")
    ap.add_argument("--context", type=int, default=1024, help="visual tokens in the cached context")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        print(json.dumps(measure(args._child, args.context, args.repeats, args.new_tokens)))
        return
    rows = []
    for model in args.model or ["tiny-random"]:
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            model,
            "--context",
            str(args.context),
            "--repeats",
            str(args.repeats),
            "--new-tokens",
            str(args.new_tokens),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, {platform.python_version()}"
    if not args.json:
        cols = [
            "model",
            "encode_ms_per_frame",
            "context_tokens",
            "ttft_ms",
            "ttft_recompute_ms",
            "ttft_speedup",
            "decode_tokens_per_s",
            "peak_rss_mb",
        ]
        print(f"machine: {machine}")
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(str(r[c]) for c in cols))
    print(json.dumps({"machine": machine, "results": rows}))


if __name__ == "__main__":
    main()
