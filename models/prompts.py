"""Prompt pieces every family shares: the opening instruction, time labels, and chat formats.

A family adapter lays out its prompt as: :meth:`ChatFormat.head` (the system part, the user's turn opened
and :data:`INTRO`), then each memory segment behind a time label, then :meth:`ChatFormat.suffix` (earlier
turns of the conversation and the question, ending where the assistant's answer starts). The chat
formats are written once here, both as the strings the adapters emit and as the Jinja chat templates of
the built-in byte tokenizers, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from memory.segment import Segment
from models.adapter import Turn

#: What the model is told before the video: it reads segments oldest first, each with its time (the clock
#: time it was seen for a live stream, the time into the video for a file).
INTRO = (
    "You are watching a live video stream. These are its latest moments, oldest first, each marked with "
    "the time it was seen.\n"
)


#: Before archived clips recalled for a question (placed after the cached memory, before the question).
RECALLED = "\nEarlier moments, recalled from the archive for this question:\n"
#: Before the newest frame shown in detail.
DETAIL = "\nThe newest frame, in detail:\n"


def clock(t: float) -> str:
    """Stream seconds as ``H:MM:SS`` (rounded to the second)."""
    s = max(0, round(t))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def wall_clock(t: float, tz: tzinfo) -> str:
    """Wall-clock seconds since the epoch as local ``HH:MM:SS`` in ``tz``."""
    return datetime.fromtimestamp(t, tz).strftime("%H:%M:%S")


def span_times(segment: Segment, tz: tzinfo) -> tuple[str, str]:
    """A segment's first and last time as the model reads them: the local clock time for a live stream
    (``14:03:12``), the time into the stream for a file (``0:01:23``)."""
    if segment.wall_start is not None and segment.wall_end is not None:
        return wall_clock(segment.wall_start, tz), wall_clock(segment.wall_end, tz)
    return clock(segment.start), clock(segment.end)


def span_label(
    segment: Segment,
    tz: tzinfo,
    *,
    one: str = "Frame at {start}",
    many: str = "{frames} frames from {start} to {end}",
) -> str:
    """A segment's time label: ``one`` for a single frame, ``many`` for a merged run of frames, with
    ``{start}``, ``{end}`` (as :func:`span_times`) and ``{frames}`` filled in."""
    start, end = span_times(segment, tz)
    template = one if segment.frames == 1 else many
    return template.format(start=start, end=end, frames=segment.frames)


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """How one family marks turns. ``suffix`` renders earlier turns and the question as
    ``prelude + (question user_end assistant_open answer_prefix answer assistant_end user_open)* +
    question user_end assistant_open``; the answer the model generates follows it."""

    preamble: str  # before the user's first turn: a BOS or a system message
    user_open: str
    user_end: str
    assistant_open: str
    answer_prefix: str  # between assistant_open and an answer in the history
    assistant_end: str
    end_of_turn: str  # the token that ends an answer, besides the tokenizer's eos
    prelude: str = ""  # between the last video segment and the first turn
    chat_template: str = ""  # the same format for tokenizer.apply_chat_template (built-in tokenizers)

    def head(self) -> str:
        return self.preamble + self.user_open + INTRO

    def suffix(self, turns: Sequence[Turn], question: str) -> str:
        text = self.prelude
        for turn in turns:
            text += (
                f"{turn.question}{self.user_end}{self.assistant_open}{self.answer_prefix}{turn.answer}"
                f"{self.assistant_end}{self.user_open}"
            )
        return text + f"{question}{self.user_end}{self.assistant_open}"


IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
END_OF_UTTERANCE = "<end_of_utterance>"

#: SmolVLM2's format, with its processor's chat template.
SMOLVLM = ChatFormat(
    preamble=IM_START,
    user_open="User: ",
    user_end=f"{END_OF_UTTERANCE}\n",
    assistant_open="Assistant:",
    answer_prefix=" ",
    assistant_end=f"{END_OF_UTTERANCE}\n",
    end_of_turn=END_OF_UTTERANCE,
    prelude="\n\n",
    chat_template=(
        "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type']"
        " == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] =="
        " 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
)

_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "{{ IMAGE }}{% elif c['type'] == 'video' %}{{ VIDEO }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _chatml(image: str, video: str) -> ChatFormat:
    """ChatML (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision): a system message, ``<|im_start|>role``
    turns ended by ``<|im_end|>``; ``image`` and ``video`` are what a media item renders to."""
    template = _CHATML_TEMPLATE.replace("{{ IMAGE }}", "{{ '" + image + "' }}").replace(
        "{{ VIDEO }}", "{{ '" + video + "' }}"
    )
    return ChatFormat(
        preamble=f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n",
        user_open=f"{IM_START}user\n",
        user_end=f"{IM_END}\n",
        assistant_open=f"{IM_START}assistant\n",
        answer_prefix="",
        assistant_end=f"{IM_END}\n",
        end_of_turn=IM_END,
        chat_template=template,
    )


#: Qwen-VL's format; media items render as vision spans.
CHATML_QWEN = _chatml("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")
#: LLaVA-OneVision's format (ChatML, media first in each message).
CHATML_LLAVA = _chatml("<image>\n", "<video>\n")

#: LLaVA-NeXT-Video's format (Vicuna style, media first in each user message).
VICUNA = ChatFormat(
    preamble="<s>",
    user_open="USER: ",
    user_end=" ",
    assistant_open="ASSISTANT:",
    answer_prefix=" ",
    assistant_end="</s>",
    end_of_turn="</s>",
    chat_template=(
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'USER: ' }}{% else %}{{ 'ASSISTANT: ' }}"
        "{% endif %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% elif c['type'] == 'video' %}"
        "{{ '<video>\n' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ ' ' }}{% else %}{{ '</s>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
)
