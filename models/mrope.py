"""What the Qwen-VL families share: patchified pixels for one-frame temporal patches, and 3-D M-RoPE.

Frames and temporal patches. Qwen's vision tower takes two frames as one temporal patch. The engine
hands the adapter frames one at a time (a batch holds frames of different streams), so each frame is
its own temporal patch with the frame repeated, exactly as Qwen's image processor does for a still
image: a frame becomes ``(H/28)(W/28)`` tokens (Qwen2.5-VL; ``/32`` for Qwen3-VL) with grid ``t = 1``,
stored as one memory entry. This costs twice the tokens of real pairs; clip-level merging (HiCo)
takes that back, and no frame waits for a partner (latency stays one frame).

Positions. Every visual token carries ``mrope``: its ``(t, h, w)`` offset inside its own grid, int64
``[N, 3]`` (for a native frame ``(0, row, col)``). HiCo merges it like the tokens (size-weighted mean,
rounded), so a merged token sits between the tokens it absorbed. A visual piece placed at running
position ``p`` gets positions ``p + offset`` and the next piece starts at ``p + max(offset) + 1``. For
a native frame that is exactly the library's rule (``p + max(H', W')`` after an image). Within a
segment that stands for several frames, the temporal offset also gets the frame index implied by
each token's (merged) time, so M-RoPE's time axis orders the frames of a merged clip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from memory.segment import Segment
from models.preprocess import to_pixel_values


def patchify(
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    patch: int,
    merge: int,
    temporal: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames -> Qwen's flat patch layout, each frame one temporal patch of ``temporal`` copies.

    Same layout as transformers' Qwen2-VL image processor ``patchify`` (merge blocks row-major, then
    patches inside a block), so the vision tower's output tokens come out row-major over the merged grid.

    Returns:
        ``pixels [F * gh * gw, 3 * temporal * patch * patch]`` float32 and ``grid_thw [F, 3]`` int64
        (``(1, gh, gw)`` per frame, ``gh = height / patch``).
    """
    h, w = size
    gh, gw = h // patch, w // patch
    if gh % merge or gw % merge or gh * patch != h or gw * patch != w:
        raise ValueError(f"frame size {size} is not a multiple of patch {patch} x merge {merge}")
    px = to_pixel_values(images, size, mean, std)  # [F, 3, H, W]
    f = px.shape[0]
    px = px.reshape(f, 3, gh // merge, merge, patch, gw // merge, merge, patch)
    px = px.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [F, gh/m, gw/m, m, m, 3, p, p]
    px = px.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    pixels = px.reshape(f * gh * gw, 3 * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * f, dtype=torch.int64)
    return pixels, grid


def grid_offsets(rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """``[rows * cols, 3]`` int64 ``(0, row, col)`` offsets of one frame's merged grid, row-major."""
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    return torch.stack([torch.zeros_like(r), r, c], dim=1)


def segment_offsets(segment: Segment) -> torch.Tensor:
    """The ``[T, 3]`` offsets of a segment's tokens: their stored ``mrope`` plus, for a segment of several
    frames, each token's frame index (from its time) on the temporal axis."""
    off = segment.extras["mrope"].long()
    if segment.frames > 1 and segment.end > segment.start:
        frac = (segment.times - segment.start) / (segment.end - segment.start)
        index = (frac * (segment.frames - 1)).round().long().to(off.device)
        off = off.clone()
        off[:, 0] += index
    return off


def place(offsets: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
    """Positions ``[3, 1, T]`` of visual tokens with ``offsets`` ``[T, 3]`` placed at ``start``, and the
    running position after them (``start + max(offsets) + 1``)."""
    pos = (offsets.long() + start).T.unsqueeze(1)
    return pos, start + int(offsets.max()) + 1


def text_positions(start: int, length: int, device: torch.device) -> torch.Tensor:
    """``[3, 1, L]``: text tokens have the same position on all three axes."""
    return torch.arange(start, start + length, device=device).view(1, 1, -1).expand(3, 1, -1)
