"""SmolVLM2 (``model_type == "smolvlm"``): SigLIP encoder, pixel-shuffle connector, Llama-style LM.

Prompt layout follows SmolVLM2's own video prompt (``Frame from MM:SS:`` then the frame's image tokens
between ``<fake_token_around_image>`` markers), with one header per memory segment, so the model sees
the time span of every segment it is shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, SmolVLMConfig, SmolVLMForConditionalGeneration

from memory.segment import Segment
from models.adapter import Encoded, Turn
from models.context import EmbeddingContext, Piece
from models.preprocess import to_pixel_values
from models.prompts import END_OF_UTTERANCE, ENDOFTEXT, IM_END, IM_START, SMOLVLM, span_label
from models.registry import FamilySpec, Tokens

FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
ENCODE_BATCH = 8  # frames per vision forward; bounds peak memory on a CPU
DETAIL_TILES = 3  # tiles along the longer side of a frame shown in detail (3 x 2 for 16:9: 448 tokens at 512 px)
CHAT = SMOLVLM


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
        self.bind(model, tokenizer, model_id, default_budget, mean, std, end_of_turn=CHAT.end_of_turn)
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
        return CHAT.head()

    def segment_pieces(self, segment: Segment) -> list[Piece]:
        # SmolVLM2's own video prompt says "Frame from MM:SS:" before each frame's image tokens.
        label = span_label(segment, self.timezone, one="Frame from {start}")
        return ["\n" + label + ":" + FAKE + GLOBAL, segment.tokens, FAKE]

    def suffix_text(self, turns: Sequence[Turn], question: str) -> str:
        return CHAT.suffix(turns, question)

    def detail_pieces(self, image: np.ndarray) -> list[Piece]:
        """The frame split into tiles at the encoder's size (at most :data:`DETAIL_TILES` along its longer
        side) plus the whole frame, laid out as SmolVLM's own image splitting does (``<row_R_col_C>`` before
        each tile, the global image last)."""
        h, w = image.shape[:2]
        scale = min(1.0, DETAIL_TILES * self._size / max(h, w))
        rows, cols = max(1, math.ceil(h * scale / self._size)), max(1, math.ceil(w * scale / self._size))
        grid = cv2.resize(image, (cols * self._size, rows * self._size), interpolation=cv2.INTER_AREA)
        s = self._size
        tiles = [grid[r * s : (r + 1) * s, c * s : (c + 1) * s] for r in range(rows) for c in range(cols)]
        tokens = self.encode([*tiles, image]).tokens
        pieces: list[Piece] = []
        for i in range(rows * cols):
            r, c = divmod(i, cols)
            pieces += [f"{FAKE}<row_{r + 1}_col_{c + 1}>", tokens[i]]
            if c == cols - 1:
                pieces.append("\n")
        return [*pieces, f"\n{FAKE}{GLOBAL}", tokens[-1], FAKE]

    # --- language model ------------------------------------------------------------------------
    def language_model(self) -> tuple[Any, Any]:
        """``(decoder, lm_head)`` for question-guided prefill (:mod:`models.guided`)."""
        return self.decoder(), self.model.lm_head


# --- built-in configurations -----------------------------------------------------------------------
TOKENS = Tokens((IM_START, IM_END, END_OF_UTTERANCE, FAKE, GLOBAL, IMAGE, ENDOFTEXT), eos=IM_END, pad=ENDOFTEXT)


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
        "bos_token_id": tokenizer.convert_tokens_to_ids(IM_START),
        **text,
    }
    return SmolVLMConfig(
        vision_config=vision,
        text_config=text,
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=False,
    )


FAMILY = FamilySpec(
    model_type="smolvlm",
    model_class="SmolVLMForConditionalGeneration",
    adapter=SmolVLMAdapter,
    chat=CHAT,
    tokens=TOKENS,
    tiny_config=tiny_config,
    real_config=smolvlm2_256m_config,
    real_name="SmolVLM2-256M",
    default_budget=4096,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
