"""Qwen3-VL (``model_type == "qwen3_vl"``): ViT with DeepStack, interleaved M-RoPE, text timestamps.

Like Qwen2.5-VL (:mod:`models.qwen2_5_vl`, whose adapter this extends): one frame = one temporal patch =
one memory entry, positions computed here. Two differences:

- DeepStack: the vision tower also returns features of some of its inner layers; the library adds them
  to the hidden states of the visual positions after LM layers ``0 .. K-1``. Fed plain ``inputs_embeds``
  the library silently drops them, so each visual token keeps its features in ``extras["deepstack"]``
  ``[N, K, D]`` (merged like the tokens: the injection is a sum per position, so a size-weighted mean
  of features belongs with the size-weighted mean of the tokens) and :meth:`Qwen3VLAdapter.run` passes
  them to the language model with the mask of visual positions.
- Time is text: every segment is preceded by its stream time as Qwen3-VL's processor writes per-pair
  timestamps (``<12.0 seconds>``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase, Qwen3VLConfig

from memory.segment import Segment
from models.context import Chunk, Visual
from models.families.qwen2_5_vl import CHAT, TOKENS, QwenVLAdapter, special_ids, text_ids
from models.mrope import segment_offsets
from models.prompts import span_label
from models.registry import FamilySpec

MEAN = STD = (0.5, 0.5, 0.5)


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL behind :class:`models.adapter.ModelAdapter`."""

    def __init__(self, model: Any, tokenizer: PreTrainedTokenizerBase, model_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("mean", MEAN)
        kwargs.setdefault("std", STD)
        super().__init__(model, tokenizer, model_id, **kwargs)

    def _vision(self, pixels: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model.model.visual(pixels.to(self.device, self.dtype), grid_thw=grid.to(self.device))
        return out.pooler_output, {"deepstack": torch.stack(out.deepstack_features, dim=1)}  # [F*N, K, D]

    def label(self, segment: Segment) -> str:
        if segment.wall_start is not None:  # a live stream: the clock time, in Qwen3-VL's brackets
            return span_label(segment, self.timezone, one="<{start}>", many="<{start}-{end}, {frames} frames>")
        if segment.frames == 1:
            return f"<{segment.start:.1f} seconds>"
        return f"<{segment.start:.1f}-{segment.end:.1f} seconds, {segment.frames} frames>"

    def visual(self, segment: Segment) -> Visual:
        return Visual(segment.tokens, {"mrope": segment_offsets(segment), "deepstack": segment.extras["deepstack"]})

    def run(self, chunk: Chunk, cache: DynamicCache, *, all_logits: bool) -> torch.Tensor:
        if "deepstack" not in chunk.extras:
            return self.forward(chunk.embeds, chunk.positions, cache, all_logits=all_logits)
        features = chunk.extras["deepstack"].to(self.dtype)  # [V, K, D]
        return self._lm(
            chunk.embeds,
            chunk.positions,
            cache,
            all_logits=all_logits,
            visual_pos_masks=chunk.visual.unsqueeze(0),
            deepstack_visual_embeds=list(features.unbind(dim=1)),
        )

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        *,
        all_logits: bool,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._lm(embeds, positions, cache, all_logits=all_logits, attention_mask=attention_mask)

    def _lm(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache, *, all_logits: bool, **deepstack: Any
    ) -> torch.Tensor:
        # The top-level forward takes no DeepStack input (it derives it from pixel values), so call the
        # language model directly and apply the head ourselves.
        hidden = self.model.model.language_model(
            inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=True, **deepstack
        ).last_hidden_state
        if not all_logits:
            hidden = hidden[:, -1:]
        return self.model.lm_head(hidden).float()


# --- built-in configurations -----------------------------------------------------------------------
def tiny_config(tokenizer: PreTrainedTokenizerBase) -> Qwen3VLConfig:
    """A tiny Qwen3-VL: 64 px frames, 16 tokens per frame, DeepStack into both layers of a 64-wide LM."""
    return Qwen3VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0, 1],
        },
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 16384,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            **text_ids(tokenizer),
        },
        **special_ids(tokenizer),
    )


def qwen3_vl_2b_config(tokenizer: PreTrainedTokenizerBase) -> Qwen3VLConfig:
    """The dimensions of Qwen3-VL-2B-Instruct (for benchmarks with random weights)."""
    return Qwen3VLConfig(
        vision_config={
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 2048,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
        text_config={
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
            **text_ids(tokenizer),
            "vocab_size": 151936,
        },
        tie_word_embeddings=True,
        **special_ids(tokenizer),
    )


FAMILY = FamilySpec(
    model_type="qwen3_vl",
    model_class="Qwen3VLForConditionalGeneration",
    adapter=Qwen3VLAdapter,
    chat=CHAT,  # Qwen2.5-VL's special tokens and chat format
    tokens=TOKENS,
    tiny_config=tiny_config,
    real_config=qwen3_vl_2b_config,
    real_name="Qwen3-VL-2B",
    default_budget=8192,
    mean=MEAN,
    std=STD,
    tiny_options={"size": 64},
)
