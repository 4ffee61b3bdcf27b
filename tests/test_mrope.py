"""Qwen's 3-D M-RoPE positions, computed in project code: pinned values, and the library's rule."""

from __future__ import annotations

import pytest
import torch

from memory import Segment
from models.context import Visual
from models.families.qwen2_5_vl import QwenVLAdapter
from models.mrope import grid_offsets, place, segment_offsets, text_positions
from tests.families import QWEN, adapter, frames, segments


def test_grid_offsets_are_row_major() -> None:
    assert grid_offsets(2, 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]


def test_place_pins_the_positions_of_a_frame_and_what_follows() -> None:
    pos, end = place(grid_offsets(2, 2), 7)
    assert pos.shape == (3, 1, 4)
    assert pos[:, 0].tolist() == [[7, 7, 7, 7], [7, 7, 8, 8], [7, 8, 7, 8]]
    assert end == 9  # 7 + max(H', W'): the library's rule after an image
    assert text_positions(9, 2, torch.device("cpu"))[:, 0].tolist() == [[9, 10], [9, 10], [9, 10]]


@pytest.mark.parametrize("name", QWEN)
def test_assembled_positions_are_pinned(name: str) -> None:
    ad = adapter(name)
    d = ad.model.config.text_config.hidden_size
    vis = Visual(torch.zeros(4, d), {"mrope": grid_offsets(2, 2)})
    chunk = ad.assemble(["ab", vis, "c"], 0)  # byte tokenizer: one token per ASCII letter
    assert chunk.positions[:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 4],
        [0, 1, 2, 2, 3, 3, 4],
        [0, 1, 2, 3, 2, 3, 4],
    ]
    assert chunk.end == 5
    assert chunk.visual.tolist() == [False, False, True, True, True, True, False]
    later = ad.assemble(["ab", vis, "c"], 100)
    assert torch.equal(later.positions, chunk.positions + 100)


@pytest.mark.parametrize("name", QWEN)
def test_prompt_positions_equal_the_librarys_rope_index(name: str) -> None:
    """Two frames of a 4x4 merged grid: each visual block at ``p + (0, row, col)``, text resuming at ``p + 4``;
    the same values transformers' own ``get_rope_index`` gives for the same prompt as images."""
    ad = adapter(name)
    segs = segments(ad, frames(2))
    pieces = [ad.head_text()] + [p for s in segs for p in ad.segment_pieces(s)] + [ad.suffix_text([], "why?")]
    chunk = ad.assemble(pieces, 0)
    pos = chunk.positions[:, 0]
    visual = chunk.visual.nonzero().flatten().tolist()
    assert len(visual) == 32
    grid = [[0] * 16, [r for r in range(4) for _ in range(4)], [c for _ in range(4) for c in range(4)]]
    for k, block in enumerate((visual[:16], visual[16:])):
        p = int(pos[0, block[0]])
        assert p == block[0] - 12 * k  # a 16-token frame advances the running position by only 4
        assert (pos[:, block] - p).tolist() == grid
        after = block[-1] + 1
        assert pos[:, after].tolist() == [p + 4] * 3
    placeholder = ad.model.config.image_token_id
    ids = []
    for piece in pieces:
        if isinstance(piece, str):
            ids += ad.tokenize(piece).tolist()
        else:
            assert isinstance(piece, Visual)
            ids += [placeholder] * int(piece.tokens.shape[0])
    input_ids = torch.tensor([ids])
    assert isinstance(ad, QwenVLAdapter)
    _, grid_thw = ad.pixels(frames(2))
    library, _ = ad.model.model.get_rope_index(input_ids, (input_ids == placeholder).int(), image_grid_thw=grid_thw)
    assert torch.equal(library, chunk.positions)
    assert chunk.end == int(library.max()) + 1


def test_segment_of_several_frames_orders_its_tokens_in_time() -> None:
    offsets = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [0, 0, 0], [0, 1, 1]])
    seg = Segment(
        id=0,
        start=10.0,
        end=13.0,
        frames=4,
        tokens=torch.zeros(6, 8),
        times=torch.tensor([10.0, 10.4, 11.2, 12.0, 12.6, 13.0], dtype=torch.float64),
        sizes=torch.ones(6, dtype=torch.int64),
        extras={"mrope": offsets},
    )
    assert segment_offsets(seg).tolist() == [[0, 0, 0], [0, 0, 1], [1, 1, 0], [2, 1, 1], [3, 0, 0], [3, 1, 1]]
    single = Segment(0, 5.0, 5.0, 1, torch.zeros(6, 8), torch.full((6,), 5.0, dtype=torch.float64),
                     torch.ones(6, dtype=torch.int64), {"mrope": offsets})  # fmt: skip
    assert torch.equal(segment_offsets(single), offsets)
