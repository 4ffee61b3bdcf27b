"""Bipartite soft matching: exact counts, what merges first, conserved means and sizes."""

from __future__ import annotations

import pytest
import torch

from memory.merge import merge_round, merge_tokens, similarity


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("t", "target"), [(3136, 64), (256, 64), (64, 63), (7, 1), (5, 5), (4, 9)])
def test_exact_target_and_round_schedule(t: int, target: int) -> None:
    x = torch.randn(t, 32, generator=gen(t))
    out = merge_tokens(x, target)
    assert out.tokens.shape == (min(t, target), 32)
    assert int(out.sizes.sum()) == t
    assert bool((out.sizes >= 1).all())


def test_448px_schedule_halves_until_target() -> None:
    counts = [3136]
    x, s = torch.randn(3136, 16, generator=gen(0)), torch.ones(3136, dtype=torch.int64)
    while counts[-1] > 64:
        r = min(counts[-1] // 2, counts[-1] - 64)
        x, s, _ = merge_round(x, s, {}, r)
        counts.append(int(x.shape[0]))
    assert counts == [3136, 1568, 784, 392, 196, 98, 64]
    assert merge_tokens(torch.randn(3136, 16, generator=gen(0)), 64).tokens.shape[0] == 64


def test_identical_tokens_merge_first() -> None:
    x = torch.randn(10, 64, generator=gen(1))
    x[5] = x[4]  # index 4 is in set A, index 5 in set B
    out = merge_tokens(x, 9)
    assert out.sizes.tolist() == [1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert torch.equal(out.tokens[4], x[4])
    keep = [0, 1, 2, 3, 6, 7, 8, 9]
    assert torch.equal(out.tokens[[0, 1, 2, 3, 5, 6, 7, 8]], x[keep])


def test_merge_is_size_weighted_and_carries_attributes() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.3]])
    sizes = torch.tensor([3, 1, 2, 2])
    times = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    pos = torch.tensor([[0, 0], [0, 4], [8, 0], [8, 4]])
    out = merge_tokens(x, 3, sizes=sizes, attrs={"times": times, "pos": pos})
    # Token 0 (A) is most similar to token 1 (B): they merge, 3:1 weighted.
    assert out.sizes.tolist() == [4, 2, 2]
    assert torch.allclose(out.tokens[0], torch.tensor([1.0, 0.025]))
    assert out.attrs["times"].tolist() == [0.25, 2.0, 3.0]
    assert out.attrs["pos"].tolist() == [[0, 1], [8, 0], [8, 4]]
    assert out.attrs["pos"].dtype == torch.int64


def test_weighted_mean_is_conserved() -> None:
    x = torch.randn(256, 48, generator=gen(2), dtype=torch.float64)
    sizes = torch.randint(1, 5, (256,), generator=gen(3))
    out = merge_tokens(x, 17, sizes=sizes, heads=4)
    before = (x * sizes[:, None]).sum(0)
    after = (out.tokens * out.sizes[:, None]).sum(0)
    assert torch.allclose(before, after, atol=1e-9)


def test_clip_of_identical_frames_keeps_its_mean() -> None:
    frame = torch.randn(16, 32, generator=gen(4))
    clip = frame.repeat(4, 1)  # 4 identical frames, 64 tokens
    out = merge_tokens(clip, 16)
    mean = (out.tokens * out.sizes[:, None].float()).sum(0) / out.sizes.sum()
    assert torch.allclose(mean, frame.mean(0), atol=1e-5)
    still = torch.randn(1, 32, generator=gen(5)).repeat(64, 1)  # a flat frame: every token the same
    out = merge_tokens(still, 16)
    assert torch.allclose(out.tokens, still[:16], atol=1e-6)
    assert int(out.sizes.sum()) == 64


def test_deterministic_on_ties() -> None:
    x = torch.zeros(12, 8)
    x[:, 0] = 1.0  # every pair ties
    a, b = merge_tokens(x, 5), merge_tokens(x.clone(), 5)
    assert torch.equal(a.sizes, b.sizes)
    assert torch.equal(a.tokens, b.tokens)


def test_head_similarity_averages_per_head_cosines() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0, 100.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, -100.0]])
    assert similarity(a, b, heads=1).item() < -0.99  # the loud channel decides
    assert similarity(a, b, heads=2).item() == pytest.approx(0.0)  # head 1 agrees (+1), head 2 opposes (-1)
    with pytest.raises(ValueError, match="heads"):
        similarity(a, b, heads=3)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="target"):
        merge_tokens(torch.randn(4, 2), 0)
    with pytest.raises(ValueError, match="attribute"):
        merge_tokens(torch.randn(4, 2), 2, attrs={"t": torch.zeros(3)})
    with pytest.raises(ValueError, match="pairs"):
        merge_round(torch.randn(4, 2), torch.ones(4, dtype=torch.int64), {}, 3)
