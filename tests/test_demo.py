"""stream/demo.py: the generated scene and its source."""

from __future__ import annotations

import numpy as np
import pytest

from stream.demo import EVENTS, DemoSource, events_at, render
from stream.source import SourceState
from tests.media import collect


def test_demo_scene_is_deterministic_and_shows_its_scripted_events() -> None:
    assert np.array_equal(render(12.3), render(12.3))
    assert [e.description for e in events_at(15.0)] == [EVENTS[0].description]
    assert events_at(75.0) == events_at(15.0)  # the script repeats every minute
    star_region = (slice(40, 100), slice(510, 580))
    yellow = np.array([250, 220, 0])

    def has_star(img: np.ndarray) -> bool:
        return bool((np.abs(img[star_region].astype(int) - yellow).sum(-1) < 30).any())

    assert has_star(render(15.0)) and not has_star(render(5.0))
    assert render(35.0).mean() < render(25.0).mean() - 40  # lights off


async def test_demo_source_fast_yields_every_sampled_frame_then_ends() -> None:
    src = DemoSource("demo", fps=2.0, lossless=True, duration=10.0)
    frames = await collect(src)
    assert [f.pts for f in frames] == pytest.approx([i / 2 for i in range(20)])
    assert [f.index for f in frames] == list(range(20))
    assert src.stats.state is SourceState.ENDED and src.stats.dropped == 0
    assert frames[0].image.shape == (360, 640, 3)
