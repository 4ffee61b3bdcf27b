"""LLaVA-OneVision (``model_type == "llava_onevision"``): SigLIP, 2-layer projector, 2x2 pooling, Qwen2 LM.

Video the library's way: every frame is encoded at the vision tower's square size, projected and pooled
to ``ceil(S/2)^2`` tokens (196 at 384 px); the video's tokens are followed by one learned
``image_newline`` vector. Positions are plain 1-D. Each memory segment is shown as a small video of its
own (its label, its tokens, the newline vector), so one frame through our path is exactly a one-frame
video through the library's.

Frames are resized to the square input (not cropped), so nothing at the frame's edges is lost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import (
    LlavaOnevisionConfig,
    PreTrainedTokenizerBase,
)

from memory.segment import Segment
from models.adapter import Encoded, Turn
from models.context import EmbeddingContext, Piece
from models.preprocess import to_pixel_values
from models.prompts import CHATML_LLAVA, ENDOFTEXT, IM_END, IM_START, ChatFormat, span_label
from models.registry import FamilySpec, Tokens

IMAGE, VIDEO = "<image>", "<video>"
CHAT = CHATML_LLAVA
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class LlavaOneVisionAdapter(EmbeddingContext):
    """LLaVA-OneVision behind :class:`models.adapter.ModelAdapter`; LLaVA-NeXT-Video subclasses it."""

    chat: ChatFormat = CHAT

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        *,
        default_budget: int,
        mean: Sequence[float] = SIGLIP_MEAN,
        std: Sequence[float] = SIGLIP_STD,
        encode_batch: int | None = None,
    ) -> None:
        self.bind(model, tokenizer, model_id, default_budget, mean, std, end_of_turn=self.chat.end_of_turn)
        self._size = int(model.config.vision_config.image_size)
        self.encode_batch = encode_batch or (8 if self.device.type == "cpu" else 64)
        self.tokens_per_frame = self.frame_tokens(model.config)

    # --- encoding ------------------------------------------------------------------------------
    @staticmethod
    def frame_tokens(config: Any) -> int:
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        return math.ceil(side / 2) ** 2  # the library's bilinear 2x2 pooling rounds up

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Frames -> ``[F, 1, 3, S, S]``: a batch of one-frame videos."""
        return to_pixel_values(images, (self._size, self._size), self._mean, self._std).unsqueeze(1)

    def _video_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        out = self.model.model.get_video_features(
            pixels.to(self.device, self.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        return out.pooler_output[:, :-1]  # the library appends image_newline per video: it is added per segment

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> Encoded:
        """``F`` frames -> ``tokens [F, N, D]``, no extras (1-D positions)."""
        out = [
            self._video_tokens(self.pixels(images[i : i + self.encode_batch]))
            for i in range(0, len(images), self.encode_batch)
        ]
        return Encoded(tokens=torch.cat(out, dim=0), extras={})

    # --- prompt layout -------------------------------------------------------------------------
    def head_text(self) -> str:
        return self.chat.head()

    def label(self, segment: Segment) -> str:
        return span_label(segment, self.timezone) + ":"

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        newline = self.model.model.image_newline[None]  # [1, D]
        return [self.label(segment), segment.tokens, newline, "\n"]

    def suffix_text(self, turns: Sequence[Turn], question: str) -> str:
        return self.chat.suffix(turns, question)


# --- built-in configurations -----------------------------------------------------------------------
TOKENS = Tokens((IM_START, IM_END, ENDOFTEXT, IMAGE, VIDEO), eos=IM_END, pad=ENDOFTEXT)


def _config(tokenizer: PreTrainedTokenizerBase, vision: dict[str, Any], text: dict[str, Any]) -> LlavaOnevisionConfig:
    ids = tokenizer.convert_tokens_to_ids
    return LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **vision},
        text_config={
            "model_type": "qwen2",
            "bos_token_id": ids(ENDOFTEXT),
            "eos_token_id": ids(IM_END),
            "pad_token_id": tokenizer.pad_token_id,
            "vocab_size": len(tokenizer),
            **text,
        },
        image_token_index=ids(IMAGE),
        video_token_index=ids(VIDEO),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=text.get("tie_word_embeddings", False),
    )


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionConfig:
    """A tiny LLaVA-OneVision: 32 px frames, 8x8 patches pooled to 16 tokens, a 2-layer 64-wide LM."""
    return _config(
        tokenizer,
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 16384,
        },
    )


def llava_onevision_0_5b_config(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionConfig:
    """The dimensions of LLaVA-OneVision-Qwen2-0.5B (for benchmarks with random weights)."""
    return _config(
        tokenizer,
        vision={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 26,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 14,
        },
        text={
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
        },
    )


FAMILY = FamilySpec(
    model_type="llava_onevision",
    model_class="LlavaOnevisionForConditionalGeneration",
    adapter=LlavaOneVisionAdapter,
    chat=CHAT,
    tokens=TOKENS,
    tiny_config=tiny_config,
    real_config=llava_onevision_0_5b_config,
    real_name="LLaVA-OneVision-0.5B",
    default_budget=8192,
    mean=SIGLIP_MEAN,
    std=SIGLIP_STD,
)
