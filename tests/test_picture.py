"""A stream's pictures through its own reused scaling context: the same pixels as PyAV's per-frame
conversion, and the right size when the stream changes resolution mid-connection; and frames freed as soon
as they are dropped."""

from __future__ import annotations

import gc

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from stream.picture import MAX_SIDE, Orienter, orientation, to_rgb


def frame(width: int, height: int, seed: int) -> av.VideoFrame:
    """A yuv420p frame of noise, as a decoder hands it on."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def reference(f: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """PyAV's own conversion, a new scaling context for the frame (what to_rgb did before)."""
    return f.to_ndarray(format="rgb24", width=width, height=height)


def test_a_reused_scaling_context_gives_the_pictures_a_fresh_one_gives() -> None:
    orienter = Orienter()
    # 1080p scaled down to the bound, a smaller camera left at its size, then 1080p again: one context
    # follows the changes.
    for i, (w, h, out) in enumerate([(1920, 1080, (1280, 720)), (640, 360, (640, 360)), (1920, 1080, (1280, 720))]):
        f = frame(w, h, seed=i)
        orienter.update(f)
        image = orienter.rgb(f)
        assert image.shape == (out[1], out[0], 3)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, reference(f, *out))
    assert max(image.shape) == MAX_SIDE


def test_to_rgb_without_a_context_and_with_one_agree() -> None:
    f = frame(1280, 960, seed=7)
    np.testing.assert_array_equal(to_rgb(f), to_rgb(f, reformatter=VideoReformatter()))
    np.testing.assert_array_equal(to_rgb(f, max_side=320), reference(f, 320, 240))


def test_reading_the_orientation_leaves_no_cycle_to_collect() -> None:
    """PyAV's ``frame.side_data`` is cached on the frame and holds the frame: a reference cycle that kept
    every decoded picture until the cyclic garbage collector ran (gigabytes with a few dozen cameras).
    Orientations are read without it, so a frame goes as soon as its last reference does."""
    frames = [frame(64, 48, seed=i) for i in range(8)]
    orienter = Orienter()
    gc.collect()
    gc.disable()
    try:
        for f in frames:
            assert orientation(f) is None
            orienter.update(f)
            orienter.picture(f)
        del f, frames
        assert gc.collect() == 0  # nothing unreachable: no cycle was made
    finally:
        gc.enable()
