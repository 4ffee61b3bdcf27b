"""Test helpers for the model families: the built-in tiny models, frames, and the library's own path.

"The library's own path" is each model's normal forward with placeholder tokens and pixel values, the
way transformers runs it after its processor: the reference our injected path must equal.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from memory import RollingMemory, Segment
from models.context import EmbeddingContext, Piece
from models.families.llava_onevision import LlavaOneVisionAdapter
from models.families.qwen2_5_vl import QwenVLAdapter
from models.families.smolvlm import SmolVLMAdapter
from models.loader import choose_placement, load_model
from models.preprocess import to_pixel_values
from models.registry import model_types

#: The tiny built-in of every registered family (a new family file is tested from the moment it exists;
#: :func:`library_logits` must learn its placeholder layout).
FAMILIES = tuple("tiny-random" if t == "smolvlm" else f"tiny-random-{t}" for t in model_types())
QWEN = ("tiny-random-qwen2_5_vl", "tiny-random-qwen3_vl")


@cache
def adapter(name: str) -> EmbeddingContext:
    model = load_model(name, choose_placement("cpu"))
    assert isinstance(model, EmbeddingContext)
    return model


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random RGB frames of an odd, non-square size (every adapter must resize)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (45, 83, 3), dtype=np.uint8) for _ in range(n)]


def segments(ad: EmbeddingContext, images: list[np.ndarray], *, budget: int = 100_000) -> list[Segment]:
    """Encode as the engine does (one batch, one memory entry per frame) and return the memory's segments."""
    enc = ad.encode(images)
    mem = RollingMemory(budget)
    for i in range(len(images)):
        mem.add_frame(enc.tokens[i], float(i), {k: v[i] for k, v in enc.extras.items()})
    return list(mem.segments())


def library_logits(ad: EmbeddingContext, segs: list[Segment], images: list[np.ndarray], question: str) -> torch.Tensor:
    """``[L, V]`` logits of the question suffix through the model's own forward: placeholder token ids where
    our path injects visual embeddings, and the frames' pixel values for the library to encode itself."""
    tok = ad.tokenizer
    kwargs: dict[str, torch.Tensor]
    if isinstance(ad, SmolVLMAdapter):
        placeholder = tok.convert_tokens_to_ids("<image>")
        size = int(ad.model.config.vision_config.image_size)
        kwargs = {"pixel_values": to_pixel_values(images, (size, size), (0.5,) * 3, (0.5,) * 3)[None]}
    elif isinstance(ad, QwenVLAdapter):
        placeholder = tok.convert_tokens_to_ids("<|image_pad|>")
        pixels, grid = ad.pixels(images)
        kwargs = {"pixel_values": pixels, "image_grid_thw": grid}
    else:
        assert isinstance(ad, LlavaOneVisionAdapter)  # LLaVA-NeXT-Video's adapter extends it
        placeholder = tok.convert_tokens_to_ids("<video>")
        kwargs = {"pixel_values_videos": ad.pixels(images)}
    pieces: list[Piece] = [ad.head_text()]
    for seg in segs:
        pieces.extend(ad.segment_pieces(seg))
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, str):
            ids += ad.tokenize(piece).tolist()
        else:  # visual tokens (and LLaVA-OneVision's newline vector, part of the library's video features)
            rows = piece.tokens.shape[0] if hasattr(piece, "tokens") else piece.shape[0]
            ids += [placeholder] * int(rows)
    n_prefix = len(ids)
    ids += ad.tokenize(ad.suffix_text([], question)).tolist()
    input_ids = torch.tensor([ids])
    if isinstance(ad, QwenVLAdapter):
        kwargs["mm_token_type_ids"] = (input_ids == placeholder).int()
    with torch.inference_mode():
        out = ad.model(input_ids=input_ids, **kwargs)
    return out.logits[0, n_prefix:].float()
