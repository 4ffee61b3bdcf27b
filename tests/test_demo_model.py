"""The shipped demo model: its files are what the training script wrote, it loads by name through
``from_pretrained`` with nothing downloaded, and it answers questions about held-out scene times through
the real HiCo memory and the adapter's own prompt, as the engine asks them."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from datetime import timezone
from pathlib import Path

import pytest

from engine.engine import wants_detail
from errors import ModelUnavailable
from memory.hico import HiCoMemory, HiCoSettings
from models import loader
from models.families.smolvlm import SmolVLMAdapter
from models.loader import choose_placement, load_model
from models.prompts import span_times, wall_clock
from models.registry import DEMO_DIR, TINY_BUDGET
from stream.demo import render
from train.demo_model import main as train_main
from train.scene import Asker, Span, shows

UTC = timezone.utc
HELD_OUT = 6 * 3600  # training renders the first 4.5 hours of the scene
WALL0 = 1_796_126_400.0


@pytest.fixture(scope="module")
def demo() -> SmolVLMAdapter:
    adapter = load_model("demo", choose_placement("cpu"))
    assert isinstance(adapter, SmolVLMAdapter)
    adapter.timezone = UTC
    return adapter


def test_the_shipped_files_are_the_ones_the_training_script_wrote() -> None:
    manifest = json.loads((DEMO_DIR / "MANIFEST.json").read_text())
    files = sorted(p.name for p in DEMO_DIR.iterdir() if p.name != "MANIFEST.json")
    assert files == sorted(manifest), "a file was added to or removed from models/demo by hand"
    for name, digest in manifest.items():
        assert hashlib.sha256((DEMO_DIR / name).read_bytes()).hexdigest() == digest, name


def test_training_is_deterministic(tmp_path: Path) -> None:
    """The script run twice (a few steps: the full run is ~25 minutes) writes the same bytes."""
    args = ["--seeing-steps", "3", "--remembering-steps", "3", "--runs", "1", "--run-seconds", "120"]
    train_main(["--out", str(tmp_path / "a"), *args])
    train_main(["--out", str(tmp_path / "b"), *args])
    a = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    b = json.loads((tmp_path / "b" / "MANIFEST.json").read_text())
    assert a == b and set(a) == set(json.loads((DEMO_DIR / "MANIFEST.json").read_text()))


def test_demo_loads_by_name_with_its_tokenizer_and_the_tiny_budget(demo: SmolVLMAdapter) -> None:
    assert demo.model_id == "demo" and demo.default_budget == TINY_BUDGET and demo.tokens_per_frame == 16
    assert demo.tokenizer.chat_template  # saved with the tokenizer, as hub models have it
    text = "When did the banner last appear? At 14:03:12."
    assert demo.tokenizer.decode(demo.tokenizer(text)["input_ids"]) == text


def test_missing_demo_files_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(loader, "DEMO_DIR", tmp_path)
    with pytest.raises(ModelUnavailable, match=r"train\.demo_model") as err:
        load_model("demo", choose_placement("cpu"))
    assert err.value.retryable is False


def _memory(adapter: SmolVLMAdapter, start: int, end: int) -> HiCoMemory:
    """The scene from ``start`` to ``end`` (stream seconds, 1 fps) through the model and HiCo memory, with a
    live camera's clock."""
    memory = HiCoMemory(HiCoSettings.fit(adapter.default_budget, adapter.tokens_per_frame))
    for i in range(start, end + 1, 8):
        times = list(range(i, min(i + 8, end + 1)))
        for t, tok in zip(times, adapter.encode([render(float(t)) for t in times]).tokens, strict=True):
            memory.add_frame(tok, float(t), wall=WALL0 + t)
    return memory


def _answer(adapter: SmolVLMAdapter, prefix: object, question: str, now: int) -> str:
    """The answer as the engine asks it: the newest frame in detail when the question wants it."""
    detail = render(float(now)) if wants_detail(question) else None
    pieces = adapter.generate(prefix, [], question, 16, threading.Event(), detail=detail)  # type: ignore[arg-type]
    return "".join(pieces)


#: Seconds into the held-out minute to ask at: each event showing at two of them, and the gaps between.
PHASES = (3, 12, 17, 24, 33, 38, 43, 48, 53, 58)


@pytest.mark.parametrize(
    "kinds",
    [
        pytest.param((("lights", "dark"), ("banner", "banner")), id="lights-banner"),
        pytest.param(
            (("star", "star"),),
            id="star",
            marks=pytest.mark.xfail(
                strict=True,
                reason="the shipped model never learnt the star (a sixth of its training moments show it; it "
                "says no to every star question): docs/demo_model.md, Known gaps",
            ),
        ),
    ],
)
def test_it_answers_about_now_on_held_out_scene_times(demo: SmolVLMAdapter, kinds: tuple[tuple[str, str], ...]) -> None:
    """Current-state questions at held-out moments over one minute's phases, each on a memory of the ten
    minutes before (native frames, clips and merged tiers): >= 95 % right, and right when the event shows
    too (a model that always says "no" to "is the star visible?" is right 5 times in 6 at random times)."""
    rng = random.Random(3)
    right: dict[bool, list[bool]] = {True: [], False: []}
    wrong = []
    first = HELD_OUT + 600
    memory = _memory(demo, HELD_OUT, first)
    for now in (first + p for p in PHASES):
        for t in range(int(memory.segments()[-1].end) + 1, now + 1):
            memory.add_frame(demo.encode([render(float(t))]).tokens[0], float(t), wall=WALL0 + t)
        segments = memory.segments()
        prefix = demo.build_prefix(segments)
        spans = [Span(s.start, s.end, *span_times(s, UTC)) for s in segments]
        asker = Asker(spans, float(now), lambda t: wall_clock(WALL0 + t, UTC), float(HELD_OUT))
        for kind, event in kinds:
            q = asker.ask(kind, rng)
            assert q is not None
            text = _answer(demo, prefix, q.text, now)
            ok = q.check(text)
            right[shows(event, now)].append(ok)
            if not ok:
                wrong.append((now % 60, q.text, q.answer, text))
    every = right[True] + right[False]
    assert sum(every) >= 0.95 * len(every), wrong
    assert sum(right[True]) >= 0.9 * len(right[True]), wrong
