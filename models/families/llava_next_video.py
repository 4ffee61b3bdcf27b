"""LLaVA-NeXT-Video (``model_type == "llava_next_video"``): CLIP-L/336, 2x2 average pooling, Vicuna LM.

The seed model of this project. Video the library's way: every frame is encoded at the vision tower's
square size, the CLS token dropped, patch features pooled 2x2 (``vision_resampler``) and projected:
144 tokens per frame at 336 px. Positions are plain 1-D and there is no newline vector for videos.
Everything else (encoding in batches, the prefix cache) is LLaVA-OneVision's adapter; this file
supplies the Vicuna conversation format and the pooling arithmetic.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextVideoConfig, PreTrainedTokenizerBase

from memory.segment import Segment
from models.context import Piece
from models.families.llava_onevision import LlavaOneVisionAdapter
from models.prompts import VICUNA, ChatFormat
from models.registry import FamilySpec, Tokens

BOS, EOS, UNK, IMAGE, VIDEO = "<s>", "</s>", "<unk>", "<image>", "<video>"
CHAT = VICUNA
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class LlavaNextVideoAdapter(LlavaOneVisionAdapter):
    """LLaVA-NeXT-Video behind :class:`models.adapter.ModelAdapter`."""

    chat: ChatFormat = CHAT

    def __init__(self, model: Any, tokenizer: PreTrainedTokenizerBase, model_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("mean", CLIP_MEAN)
        kwargs.setdefault("std", CLIP_STD)
        super().__init__(model, tokenizer, model_id, **kwargs)

    @staticmethod
    def frame_tokens(config: Any) -> int:
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        return (side // int(config.spatial_pool_stride)) ** 2

    def _video_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        out = self.model.model.get_video_features(
            pixels.to(self.device, self.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        return out.pooler_output

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        return [self.label(segment), segment.tokens, "\n"]


# --- built-in configurations -----------------------------------------------------------------------
TOKENS = Tokens((BOS, EOS, UNK, IMAGE, VIDEO), eos=EOS, pad=UNK)


def _config(tokenizer: PreTrainedTokenizerBase, vision: dict[str, Any], text: dict[str, Any]) -> LlavaNextVideoConfig:
    ids = tokenizer.convert_tokens_to_ids
    return LlavaNextVideoConfig(
        vision_config={"model_type": "clip_vision_model", **vision},
        text_config={
            "model_type": "llama",
            "bos_token_id": ids(BOS),
            "eos_token_id": ids(EOS),
            "pad_token_id": tokenizer.pad_token_id,
            "vocab_size": len(tokenizer),
            **text,
        },
        image_token_index=ids(IMAGE),
        video_token_index=ids(VIDEO),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=2,
    )


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> LlavaNextVideoConfig:
    """A tiny LLaVA-NeXT-Video: 32 px frames, 8x8 patches pooled to 16 tokens, a 2-layer 64-wide LM."""
    return _config(
        tokenizer,
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
            "projection_dim": 32,
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


def llava_next_video_7b_config(tokenizer: PreTrainedTokenizerBase) -> LlavaNextVideoConfig:
    """The dimensions of LLaVA-NeXT-Video-7B (for benchmarks with random weights)."""
    return _config(
        tokenizer,
        vision={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
        text={
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "vocab_size": 32064,
        },
    )


FAMILY = FamilySpec(
    model_type="llava_next_video",
    model_class="LlavaNextVideoForConditionalGeneration",
    adapter=LlavaNextVideoAdapter,
    chat=CHAT,
    tokens=TOKENS,
    tiny_config=tiny_config,
    real_config=llava_next_video_7b_config,
    real_name="LLaVA-NeXT-Video-7B",
    default_budget=4096,
    mean=CLIP_MEAN,
    std=CLIP_STD,
)
