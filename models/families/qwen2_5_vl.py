"""Qwen2.5-VL (``model_type == "qwen2_5_vl"``): windowed ViT, 2x2 patch merger, Qwen2 LM with 3-D M-RoPE.

Each frame is one temporal patch (the frame repeated, as Qwen's processor does for a still image) and
one memory entry; see :mod:`models.mrope` for why and for the position rule. Positions are computed here
and passed as ``position_ids [3, 1, L]``: fed plain ``inputs_embeds``, the library would silently use
1-D positions.

Prompt: Qwen's chat format; each memory segment is its time label then its tokens between
``<|vision_start|>`` and ``<|vision_end|>``, as the library lays out an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLConfig

from memory.segment import Segment
from models.adapter import Encoded, Turn
from models.context import EmbeddingContext, Piece, Visual
from models.mrope import grid_offsets, patchify, place, segment_offsets, text_positions
from models.prompts import CHATML_QWEN, ENDOFTEXT, IM_END, IM_START, span_label
from models.registry import FamilySpec, Tokens

START, END, IMAGE, VIDEO = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
CHAT = CHATML_QWEN
#: Qwen's processors normalise with OpenAI CLIP's statistics.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class QwenVLAdapter(EmbeddingContext):
    """Qwen2.5-VL behind :class:`models.adapter.ModelAdapter`; Qwen3-VL subclasses it."""

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        *,
        default_budget: int,
        size: int = 448,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        encode_batch: int | None = None,
    ) -> None:
        self.bind(model, tokenizer, model_id, default_budget, mean, std, end_of_turn=CHAT.end_of_turn)
        vc = model.config.vision_config
        self._patch, self._merge, self._temporal = (
            int(vc.patch_size),
            int(vc.spatial_merge_size),
            int(vc.temporal_patch_size),
        )
        unit = self._patch * self._merge
        self._size = max(unit, size // unit * unit)  # frames are resized to a multiple of patch x merge
        self._side = self._size // unit  # merged tokens per row
        self.tokens_per_frame = self._side**2
        # The vision tower attends within each frame (cu_seqlens), so batching frames is exact.
        self.encode_batch = encode_batch or (8 if self.device.type == "cpu" else 64)

    # --- encoding ------------------------------------------------------------------------------
    def pixels(self, images: Sequence[np.ndarray], size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames -> the vision tower's inputs: flat patches and ``grid_thw [F, 3]`` (one temporal patch each),
        at the adapter's frame size or ``size`` (a multiple of patch x merge)."""
        side = size or self._size
        return patchify(
            images,
            (side, side),
            self._mean,
            self._std,
            patch=self._patch,
            merge=self._merge,
            temporal=self._temporal,
        )

    def _vision(self, pixels: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model.model.visual(pixels.to(self.device, self.dtype), grid_thw=grid.to(self.device))
        return out.pooler_output, {}

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray], size: int | None = None) -> Encoded:
        """``F`` frames -> ``tokens [F, N, D]`` and ``extras["mrope"] [F, N, 3]`` int64 grid offsets
        (plus whatever :meth:`_vision` adds: Qwen3-VL's DeepStack features). ``size``: encode at another
        resolution than the memory's (a multiple of patch x merge; more tokens per frame)."""
        unit = self._patch * self._merge
        side = (size or self._size) // unit
        tokens: list[torch.Tensor] = []
        extras: dict[str, list[torch.Tensor]] = {}
        n = side * side
        for i in range(0, len(images), self.encode_batch):
            chunk = images[i : i + self.encode_batch]
            pooled, more = self._vision(*self.pixels(chunk, side * unit))
            tokens.append(pooled.reshape(len(chunk), n, -1))
            for key, value in more.items():
                extras.setdefault(key, []).append(value.reshape(len(chunk), n, *value.shape[1:]))
        offsets = grid_offsets(side, side, self.device)
        out = {k: torch.cat(v, dim=0) for k, v in extras.items()}
        out["mrope"] = offsets.unsqueeze(0).expand(len(images), -1, -1).contiguous()
        return Encoded(tokens=torch.cat(tokens, dim=0), extras=out)

    # --- prompt layout -------------------------------------------------------------------------
    def head_text(self) -> str:
        return CHAT.head()

    def label(self, segment: Segment) -> str:
        return span_label(segment, self.timezone) + ": "

    def visual(self, segment: Segment) -> Visual:
        return Visual(segment.tokens, {"mrope": segment_offsets(segment)})

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        return [self.label(segment) + START, self.visual(segment), END + "\n"]

    def suffix_text(self, turns: Sequence[Turn], question: str) -> str:
        return CHAT.suffix(turns, question)

    def detail_pieces(self, image: np.ndarray) -> list[Piece]:
        """The frame at twice the memory's resolution (four times the tokens): Qwen's vision tower takes any
        grid (dynamic resolution), and M-RoPE places it on its own."""
        encoded = self.encode([image], size=2 * self._size)
        extras = {k: v[0] for k, v in encoded.extras.items()}
        return [START, Visual(encoded.tokens[0], extras), END + "\n"]

    # --- positions -----------------------------------------------------------------------------
    def positions(self, start: int, length: int) -> torch.Tensor:
        return text_positions(start, length, self.device)

    def visual_positions(self, visual: Visual, start: int) -> tuple[torch.Tensor, int]:
        return place(visual.extras["mrope"].to(self.device), start)


# --- built-in configurations -----------------------------------------------------------------------
TOKENS = Tokens((IM_START, IM_END, ENDOFTEXT, START, END, IMAGE, VIDEO), eos=IM_END, pad=ENDOFTEXT)


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Token ids a Qwen-VL config names; all inside the tiny vocabulary (the library indexes with them)."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids(IMAGE),
        "video_token_id": ids(VIDEO),
        "vision_start_token_id": ids(START),
        "vision_end_token_id": ids(END),
    }


def text_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL: 64 px frames, 16 tokens per frame, a 2-layer 64-wide LM (head 16: M-RoPE 2/3/3)."""
    return Qwen2_5_VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 32,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 16384,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            **text_ids(tokenizer),
        },
        **special_ids(tokenizer),
    )


def qwen2_5_vl_3b_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """The dimensions of Qwen2.5-VL-3B-Instruct (for benchmarks with random weights)."""
    return Qwen2_5_VLConfig(
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": 2048,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        },
        text_config={
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            **text_ids(tokenizer),
            "vocab_size": 151936,
        },
        tie_word_embeddings=True,
        **special_ids(tokenizer),
    )


FAMILY = FamilySpec(
    model_type="qwen2_5_vl",
    model_class="Qwen2_5_VLForConditionalGeneration",
    adapter=QwenVLAdapter,
    chat=CHAT,
    tokens=TOKENS,
    tiny_config=tiny_config,
    real_config=qwen2_5_vl_3b_config,
    real_name="Qwen2.5-VL-3B",
    default_budget=8192,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    tiny_options={"size": 64},
)
