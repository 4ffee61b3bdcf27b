"""Frame preprocessing in project code: numpy RGB -> normalised torch tensors (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


def to_pixel_values(
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize and normalise frames the way the model's own processor does for video frames.

    Args:
        images: ``F`` arrays ``[H, W, 3]`` uint8 RGB.
        size: ``(height, width)`` the vision encoder takes.
        mean, std: per-channel normalisation after scaling to ``[0, 1]``.

    Returns:
        ``[F, 3, height, width]`` float32.
    """
    h, w = size
    out = np.empty((len(images), h, w, 3), dtype=np.float32)
    for i, img in enumerate(images):
        # INTER_AREA for shrinking (no aliasing), cubic for the rare upscale.
        interp = cv2.INTER_AREA if img.shape[0] >= h and img.shape[1] >= w else cv2.INTER_CUBIC
        out[i] = cv2.resize(img, (w, h), interpolation=interp)
    out *= 1.0 / 255.0
    out -= np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
