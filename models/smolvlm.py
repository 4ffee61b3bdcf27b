"""SmolVLM2 (``model_type == "smolvlm"``): SigLIP encoder, pixel-shuffle connector, Llama-style LM.

Prompt layout follows SmolVLM2's own video prompt (``Frame from MM:SS:`` then the frame's image tokens
between ``<fake_token_around_image>`` markers), with one header per memory segment, so the model sees
the time span of every segment it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, SmolVLMConfig, SmolVLMForConditionalGeneration

from memory.segment import Segment
from models.adapter import Encoded, Turn
from models.context import EmbeddingContext, Piece
from models.preprocess import to_pixel_values
from models.tokenizer import byte_tokenizer

FAKE, GLOBAL, IMAGE, EOU = "<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>"
HEAD = (
    "<|im_start|>User: You are watching a live video stream. These are its latest moments, oldest first, "
    "each marked with its time (H:MM:SS from the start of the stream).\n"
)
#: SmolVLM2's chat template (as in its processor), for the tiny tokenizer.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type']"
    " == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] =="
    " 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
ENCODE_BATCH = 8  # frames per vision forward; bounds peak memory on a CPU


def clock(t: float) -> str:
    s = max(0, round(t))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class SmolVLMAdapter(EmbeddingContext):
    """The SmolVLM2 family behind :class:`models.adapter.ModelAdapter`."""

    def __init__(
        self,
        model: SmolVLMForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        *,
        default_budget: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        self.bind(model, tokenizer, model_id, default_budget, mean, std, end_of_turn=EOU)
        vc = model.config.vision_config
        self._size = int(vc.image_size)
        self._patches = self._size // int(vc.patch_size)
        self.tokens_per_frame = self._patches**2 // int(model.config.scale_factor) ** 2

    # --- encoding ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        """``F`` frames -> ``tokens [F, N, D]`` (N = ``tokens_per_frame``), no extras."""
        inner = self.model.model
        out = []
        for i in range(0, len(images), ENCODE_BATCH):
            chunk = images[i : i + ENCODE_BATCH]
            pv = to_pixel_values(chunk, (self._size, self._size), self._mean, self._std)
            pv = pv.to(self.device, self.dtype)
            mask = torch.ones(len(chunk), self._patches, self._patches, dtype=torch.bool, device=self.device)
            hidden = inner.vision_model(pixel_values=pv, patch_attention_mask=mask).last_hidden_state
            out.append(inner.connector(hidden))
        return Encoded(tokens=torch.cat(out, dim=0), extras={})

    # --- prompt layout -------------------------------------------------------------------------
    def head_text(self) -> str:
        return HEAD

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        if segment.frames == 1:
            label = f"\nFrame from {clock(segment.start)}:"
        else:
            label = f"\n{segment.frames} frames from {clock(segment.start)} to {clock(segment.end)}:"
        return [label + FAKE + GLOBAL, segment.tokens, FAKE]

    def suffix_text(self, turns: Sequence[Turn], question: str) -> str:
        text = "\n\n"
        for turn in turns:
            text += f"{turn.question}{EOU}\nAssistant: {turn.answer}{EOU}\nUser: "
        return text + f"{question}{EOU}\nAssistant:"

    # --- language model ------------------------------------------------------------------------
    def language_model(self) -> tuple[Any, Any]:
        """``(decoder, lm_head)`` for question-guided prefill (:mod:`models.guided`)."""
        return self.model.model.text_model, self.model.lm_head


# --- built-in configurations -----------------------------------------------------------------------
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", EOU, FAKE, GLOBAL, IMAGE, "<|endoftext|>")


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    return byte_tokenizer(SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> SmolVLMConfig:
    """A tiny SmolVLM2: 64 px frames, 16 visual tokens per frame, a 2-layer 64-wide LM."""
    return _config(
        tokenizer,
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
        },
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 16384,
            "vocab_size": len(tokenizer),
        },
        scale_factor=2,
    )


def smolvlm2_256m_config(tokenizer: PreTrainedTokenizerBase) -> SmolVLMConfig:
    """The dimensions of SmolVLM2-256M-Video-Instruct (for benchmarks with random weights)."""
    return _config(
        tokenizer,
        vision={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
            "patch_size": 16,
        },
        text={
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "vocab_size": 49280,
            "rope_theta": 100000.0,
        },
        scale_factor=4,
    )


def _config(
    tokenizer: PreTrainedTokenizerBase, *, vision: dict[str, Any], text: dict[str, Any], scale_factor: int
) -> SmolVLMConfig:
    text = {
        "model_type": "llama",
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|im_start|>"),
        **text,
    }
    return SmolVLMConfig(
        vision_config=vision,
        text_config=text,
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=False,
    )


def random_model(config: SmolVLMConfig, seed: int) -> SmolVLMForConditionalGeneration:
    torch.manual_seed(seed)
    return SmolVLMForConditionalGeneration(config)
