"""The trade-off of question-guided dropping (models/guided.py): time to first token against fidelity.

A HiCo memory is filled to its budget with visual tokens of the demo scene (a few real encoded frames,
cycled with a little noise so that no two frames are identical), then the same questions are answered
four ways:

- ``cached``: on the cached prefix (the default path; only the question is prefilled);
- ``fresh``: one fresh prefill over everything, nothing dropped (the reference for fidelity);
- ``uniform`` / ``attention``: a fresh prefill that drops visual tokens at ``--layers`` to ``--keep``.

Fidelity is measured on the first answer token's distribution against ``fresh``: KL divergence, top-1
agreement and top-5 overlap. With random weights these say how much the drop perturbs the model's
output, not how good answers are. The last line printed is one JSON object.

    python bench/guided.py --model random-smolvlm2-256m --layers 4 18 --keep 0.75 0.25
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.hico import HiCoMemory, HiCoSettings
from models.families.smolvlm import SmolVLMAdapter
from models.guided import GuidedAnswerer, GuidedSettings
from models.loader import choose_placement, load_model
from stream.demo import render

T = TypeVar("T")
QUESTIONS = ("When did the lights go off?", "Is anyone at the door?", "What is happening right now?")


def best_ms(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The fastest of ``repeats`` calls (ms) and the last call's result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random-smolvlm2-256m")
    ap.add_argument("--budget", type=int, help="in-context visual tokens (default: the model's)")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 18])
    ap.add_argument("--keep", type=float, nargs="+", default=[0.75, 0.25])
    ap.add_argument("--distinct", type=int, default=8, help="real frames encoded, then cycled")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    adapter = load_model(args.model, choose_placement("cpu"))
    if not isinstance(adapter, SmolVLMAdapter):
        raise SystemExit("guided prefill is wired for the SmolVLM2 family only")
    budget = args.budget or adapter.default_budget
    mem = HiCoMemory(HiCoSettings.fit(budget, adapter.tokens_per_frame))
    base = adapter.encode([render(7.0 * i) for i in range(args.distinct)]).tokens
    g = torch.Generator().manual_seed(0)
    scale = float(base.std())
    t = 0
    # Fill until the oldest tier has evicted something: the memory is at its steady-state size.
    while mem.stats().long_term == 0:
        noise = torch.randn(base.shape[1:], generator=g) * 0.05 * scale
        mem.add_frame(base[t % args.distinct] + noise.to(base.dtype), float(t))
        t += 1
    segs = mem.segments()
    prefix = adapter.build_prefix(segs)

    def cached(q: str) -> None:
        for _ in adapter.generate_ids(prefix, [], q, 1, threading.Event()):
            break

    modes = {
        "fresh": GuidedAnswerer(adapter, GuidedSettings("uniform", (args.layers[0],), (1.0,))),
        "uniform": GuidedAnswerer(adapter, GuidedSettings("uniform", tuple(args.layers), tuple(args.keep))),
        "attention": GuidedAnswerer(adapter, GuidedSettings("attention", tuple(args.layers), tuple(args.keep))),
    }
    ttft: dict[str, list[float]] = {"cached": [], **{m: [] for m in modes}}
    fidelity: dict[str, dict[str, list[float]]] = {
        m: {"kl": [], "top1": [], "top5": []} for m in ("uniform", "attention")
    }
    for q in QUESTIONS:
        ttft["cached"].append(best_ms(functools.partial(cached, q), args.repeats * 3)[0])
        logits = {}
        for name, answerer in modes.items():
            ms, state = best_ms(functools.partial(answerer.prefill, segs, [], q), args.repeats)
            ttft[name].append(ms)
            logits[name] = state.logits
        ref = torch.log_softmax(logits["fresh"], -1)
        for name in fidelity:
            lp = torch.log_softmax(logits[name], -1)
            fidelity[name]["kl"].append(float((ref.exp() * (ref - lp)).sum()))
            fidelity[name]["top1"].append(float(int(ref.argmax()) == int(lp.argmax())))
            top_ref, top = set(ref.topk(5).indices.tolist()), set(lp.topk(5).indices.tolist())
            fidelity[name]["top5"].append(len(top_ref & top) / 5)

    visual = sum(s.num_tokens for s in segs)
    result = {
        "model": args.model,
        "budget": budget,
        "visual_tokens": visual,
        "prompt_tokens": prefix.length,
        "frames_in_context": mem.stats().frames,
        "layers": args.layers,
        "keep": args.keep,
        "decoder_layers": len(adapter.language_model()[0].layers),
        "threads": torch.get_num_threads(),
        **{f"ttft_ms_{k}": round(statistics.median(v), 1) for k, v in ttft.items()},
        **{
            f"{name}_{metric}": round(statistics.mean(vals), 4)
            for name, metrics in fidelity.items()
            for metric, vals in metrics.items()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
