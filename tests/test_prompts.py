"""The prompt each family builds, pinned: the opening, segment labels, and the chat suffix (models/prompts.py).

The texts are the ones the families used before the shared module existed; a change here changes what
every model reads, so it must be deliberate.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import torch

from memory.segment import Segment
from models.adapter import Turn
from models.prompts import INTRO, clock
from models.registry import family
from tests.families import adapter

TURNS = [Turn("Is it red?", "Yes."), Turn("And now?", "No.")]
CHATML_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + INTRO
CHATML_SUFFIX = (
    "Is it red?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n"
    "<|im_start|>assistant\nNo.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
)
EXPECTED = {
    "tiny-random": (
        "<|im_start|>User: " + INTRO,
        "\n\nIs it red?<end_of_utterance>\nAssistant: Yes.<end_of_utterance>\nUser: And now?<end_of_utterance>\n"
        "Assistant: No.<end_of_utterance>\nUser: Q?<end_of_utterance>\nAssistant:",
        [
            ["\nFrame from 1:02:03:<fake_token_around_image><global-img>", "<fake_token_around_image>"],
            ["\n8 frames from 0:00:10 to 0:00:18:<fake_token_around_image><global-img>", "<fake_token_around_image>"],
        ],
    ),
    "tiny-random-qwen2_5_vl": (
        CHATML_HEAD,
        CHATML_SUFFIX,
        [
            ["Frame at 1:02:03: <|vision_start|>", "<|vision_end|>\n"],
            ["8 frames from 0:00:10 to 0:00:18: <|vision_start|>", "<|vision_end|>\n"],
        ],
    ),
    "tiny-random-qwen3_vl": (
        CHATML_HEAD,
        CHATML_SUFFIX,
        [
            ["<3723.4 seconds><|vision_start|>", "<|vision_end|>\n"],
            ["<10.0-17.6 seconds, 8 frames><|vision_start|>", "<|vision_end|>\n"],
        ],
    ),
    "tiny-random-llava_onevision": (
        CHATML_HEAD,
        CHATML_SUFFIX,
        [["Frame at 1:02:03:", "\n"], ["8 frames from 0:00:10 to 0:00:18:", "\n"]],
    ),
    "tiny-random-llava_next_video": (
        "<s>USER: " + INTRO,
        "Is it red? ASSISTANT: Yes.</s>USER: And now? ASSISTANT: No.</s>USER: Q? ASSISTANT:",
        [["Frame at 1:02:03:", "\n"], ["8 frames from 0:00:10 to 0:00:18:", "\n"]],
    ),
}


def segment(frames: int, start: float, end: float) -> Segment:
    n = 2
    extras = {"mrope": torch.zeros(n, 3, dtype=torch.int64), "deepstack": torch.zeros(n, 2, 4)}
    times = torch.full((n,), start, dtype=torch.float64)
    return Segment(0, start, end, frames, torch.zeros(n, 4), times, torch.ones(n, dtype=torch.int64), extras)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prompt_pieces_are_pinned(name: str) -> None:
    ad = adapter(name)
    head, suffix, labels = EXPECTED[name]
    assert ad.head_text() == head
    assert ad.suffix_text(TURNS, "Q?") == suffix
    got = [
        [p for p in ad.segment_pieces(seg) if isinstance(p, str)]
        for seg in (segment(1, 3723.4, 3723.4), segment(8, 10.0, 17.6))
    ]
    assert got == labels


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_tokenizer_chat_template_writes_the_same_turns(name: str) -> None:
    """The built-in tokenizer's chat template and the adapter's suffix are one format (models/prompts.py)."""
    ad = adapter(name)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Is it red?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
        {"role": "user", "content": [{"type": "text", "text": "Q?"}]},
    ]
    rendered = ad.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chat = family(ad.model.config.model_type).chat
    body = ad.suffix_text([Turn("Is it red?", "Yes.")], "Q?").removeprefix(chat.prelude)
    assert rendered.endswith(body)
    # The template opens the first turn itself (with the format's preamble, or without a system message).
    assert rendered.removesuffix(body) in (chat.user_open, chat.preamble + chat.user_open)


def test_clock_rounds_to_the_second_and_never_goes_negative() -> None:
    assert [clock(t) for t in (0.0, 59.6, 3723.4, -2.0)] == ["0:00:00", "0:01:00", "1:02:03", "0:00:00"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_live_segments_are_labelled_with_the_local_clock(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ad = adapter(name)
    tz = ZoneInfo("Asia/Kolkata")  # +05:30: a zone that is not the machine's
    monkeypatch.setattr(ad, "timezone", tz)
    wall = datetime(2026, 12, 1, 14, 3, 12, tzinfo=tz).timestamp()
    seg = dataclasses.replace(segment(8, 10.0, 38.0), wall_start=wall, wall_end=wall + 28)
    label = next(p for p in ad.segment_pieces(seg) if isinstance(p, str))
    assert "14:03:12" in label and "14:03:40" in label and "8 frames" in label, label
    assert "0:00:10" not in label and "10.0" not in label  # not the time into the stream
