"""Model-family throughput and latency: encode (and merge), time to first token over a visual memory,
decode speed, peak memory.

Runs the tiny random configs of every family on the CPU always (a smoke check of the whole path), and
the real-size configs with random weights on a GPU when one is present (timing does not depend on
weight values, so nothing is downloaded). Prints a table and one JSON line.

    python bench/gpu.py                      # tiny on CPU; real-size too when CUDA is available
    python bench/gpu.py --sizes tiny --contexts 256 --frames 4 --decode 4    # the test suite's smoke run

Targets for one H100 (recorded against, not asserted): a 2B-class model encodes and merges >= 30 frames
per second at 448 px; time to first token <= 300 ms for a 3B model over 8k tokens of memory; >= 100
generated tokens per second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import Segment
from models.loader import Placement, build_random, choose_placement
from models.registry import family as family_spec
from models.registry import model_types

CLIP = 4  # frames merged together (HiCo clip)
MERGED_PER_FRAME = 16  # HiCo's clip-level target
BATCH = 4  # answers decoded together in the batched-decode measurement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(family: str, size: str, placement: Placement, seed: int = 0) -> Any:
    """An adapter (an :class:`EmbeddingContext`) over a random model of ``family`` at ``size`` (the registry's
    tiny or real-size configuration; real size is named after the published model it copies)."""
    spec = family_spec(family)
    name = f"tiny-random-{family}" if size == "tiny" else spec.real_name
    return build_random(spec, size, placement, seed=seed, model_id=name)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


REPEAT = 3  # timed runs per measurement (best of), after one warm-up; --repeat sets it


def timed(fn: Callable[[], Any], device: torch.device, repeat: int | None = None) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (after one warm-up), in seconds, and the last result."""
    out = fn()
    sync(device)
    best = math.inf
    for _ in range(repeat or REPEAT):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def merge_fn() -> Callable[..., Any] | None:
    """HiCo's clip merge (``memory.merge``, issue 3) when present on this branch."""
    if importlib.util.find_spec("memory.merge") is None:
        return None
    merge = importlib.import_module("memory.merge")
    return merge.merge_tokens  # type: ignore[no-any-return,unused-ignore]


def memory_of(encoded: Any, tokens: int, n: int) -> list[Segment]:
    """Segments holding about ``tokens`` visual tokens, cycling through the encoded frames (attention cost
    does not depend on the values)."""
    segs = []
    frames_n = encoded.tokens.shape[0]
    for i in range(max(1, math.ceil(tokens / n))):
        j = i % frames_n
        extras = {k: v[j] for k, v in encoded.extras.items()}
        segs.append(Segment.frame(i, float(i), encoded.tokens[j], extras))
    return segs


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def bench(
    family: str, size: str, placement: Placement, args: argparse.Namespace, contexts: list[int]
) -> dict[str, Any]:
    device = placement.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ad = build(family, size, placement)  # an EmbeddingContext and a ModelAdapter
    ad.stop_token_ids = frozenset()  # random weights may emit a stop token at once: decode the full length
    n = ad.tokens_per_frame
    images = frames(args.frames)
    enc_s, encoded = timed(lambda: ad.encode(images), device)
    row: dict[str, Any] = {
        "family": family,
        "size": size,
        "model": ad.model_id,
        "device": placement.describe(),
        "tokens_per_frame": n,
        "encode_fps": round(len(images) / enc_s, 1),
    }
    merge = merge_fn()
    if merge is not None and len(images) >= CLIP:
        clip = encoded.tokens[:CLIP].reshape(CLIP * n, -1)
        attrs = {k: v[:CLIP].reshape(CLIP * n, *v.shape[2:]) for k, v in encoded.extras.items()}
        target = CLIP * min(MERGED_PER_FRAME, max(1, n // 4))  # tiny configs: a quarter, so the merge does work
        merge_s, _ = timed(lambda: merge(clip, target, attrs=attrs), device)
        row["merge_fps"] = round(CLIP / merge_s, 1)
        row["encode_merge_fps"] = round(1 / (enc_s / len(images) + merge_s / CLIP), 1)
    else:
        row["merge_fps"] = row["encode_merge_fps"] = None
    cancel = threading.Event()
    for ctx in contexts:
        segs = memory_of(encoded, ctx, n)

        def prefill(segs: list[Segment] = segs) -> Any:
            return ad.build_prefix(segs)

        pre_s, prefix = timed(prefill, device)

        def first_token(prefix: Any = prefix) -> int:
            return next(iter(ad.generate_ids(prefix, [], "What is happening now?", 1, cancel)))

        ttft_s, _ = timed(first_token, device)
        row[f"prefill_ms@{ctx}"] = round(pre_s * 1000, 1)
        row[f"ttft_ms@{ctx}"] = round(ttft_s * 1000, 1)
    prefix = ad.build_prefix(memory_of(encoded, contexts[0], n))

    def decode() -> int:
        return sum(1 for _ in ad.generate_ids(prefix, [], "Describe it.", args.decode + 1, cancel))

    dec_s, produced = timed(decode, device)
    first_s, _ = timed(lambda: next(iter(ad.generate_ids(prefix, [], "Describe it.", 1, cancel))), device)
    row["decode_tok_s"] = round((produced - 1) / max(dec_s - first_s, 1e-9), 1)
    # Batched decode (models/generation.py): BATCH answers on the same memory stepped together, the
    # engine's way with concurrent questions. Aggregate tokens per second, and against one answer alone.
    if hasattr(ad, "begin"):

        def batched() -> int:
            gens = [ad.begin(prefix, [], f"Describe it ({i}).", args.decode + 1) for i in range(BATCH)]
            while not all(g.done for g in gens):
                ad.decode(gens)
            return sum(g.usage.completion for g in gens)

        begins_s, _ = timed(lambda: [ad.begin(prefix, [], f"Describe it ({i}).", 1) for i in range(BATCH)], device)
        bat_s, bat_produced = timed(batched, device)
        rate = (bat_produced - BATCH) / max(bat_s - begins_s, 1e-9)
        row[f"decode_tok_s@batch{BATCH}"] = round(rate, 1)
        row[f"batch{BATCH}_vs_1"] = round(rate / max(row["decode_tok_s"], 1e-9), 2)
    row["peak_mb"] = round(peak_mb(device))
    return row


def table(rows: list[dict[str, Any]], contexts: list[int]) -> str:
    cols = ["model", "device", "tokens_per_frame", "encode_fps", "merge_fps", "encode_merge_fps"]
    cols += (
        [f"prefill_ms@{c}" for c in contexts]
        + [f"ttft_ms@{c}" for c in contexts]
        + ["ttft_vs_smolvlm", "decode_tok_s", f"decode_tok_s@batch{BATCH}", f"batch{BATCH}_vs_1", "peak_mb"]
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # SmolVLM2 first: the other rows' ratios are against it.
    every = sorted(model_types(), key=lambda t: t != "smolvlm")
    parser.add_argument("--families", default=",".join(every), help="comma-separated (default: all)")
    parser.add_argument("--sizes", default="auto", help="tiny, real, or auto (tiny always, real with CUDA)")
    parser.add_argument("--contexts", default=None, help="visual tokens in memory, comma-separated")
    parser.add_argument("--frames", type=int, default=8, help="frames per encode batch (default 8)")
    parser.add_argument("--decode", type=int, default=32, help="tokens to generate for decode speed (default 32)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement, best of (default 3)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args(argv)
    global REPEAT
    REPEAT = args.repeat
    if args.threads:
        torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(model_types()))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(model_types())}")
    cuda = torch.cuda.is_available()
    sizes = ["tiny", "real"] if args.sizes == "auto" and cuda else ["tiny"] if args.sizes == "auto" else [args.sizes]
    if "real" in sizes and not cuda:
        parser.error("real-size configs need a CUDA device (they take minutes per frame on a CPU)")
    explicit = [int(c) for c in args.contexts.split(",")] if args.contexts else None
    rows = []
    for size in sizes:
        placement = choose_placement("cuda" if size == "real" else "cpu")
        contexts = explicit or ([1024, 4096, 8192, 16384] if size == "real" else [1024, 4096])
        size_rows = []
        for family in families:
            size_rows.append(bench(family, size, placement, args, contexts))
            if placement.device.type == "cuda":
                torch.cuda.empty_cache()  # the previous model is gone; do not count its blocks as ours
        # Ratios against the SmolVLM path measured in the same run: comparable across loaded machines.
        base = next((r for r in size_rows if r["family"] == "smolvlm"), None)
        for r in size_rows:
            key = f"ttft_ms@{contexts[-1]}"
            r["ttft_vs_smolvlm"] = round(r[key] / base[key], 2) if base else None
        print(table(size_rows, contexts))
        rows += size_rows
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps({"bench": "gpu", "machine": machine, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
