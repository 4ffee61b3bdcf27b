"""``--torch-threads``: torch's CPU threads, set once for the process before the model loads.

Why it is a setting: with many cameras on a small CPU, torch's idle intra-op threads spin while the
readers need the cores (bench/scale.py: 24 cameras within 2 s with torch's default on 2 cores, 36 with one).
"""

from __future__ import annotations

import pytest
import torch

from engine.build import EngineRecipe, load_adapter
from errors import ConfigError
from livesight.cli import build_parser
from livesight.config import load_serve_config
from tests.support.server import TOKEN


def test_torch_threads_is_a_validated_setting() -> None:
    assert load_serve_config({"token": TOKEN, "torch_threads": 1}).torch_threads == 1
    assert load_serve_config({"token": TOKEN}).torch_threads is None  # torch's own choice
    with pytest.raises(ConfigError, match="torch_threads"):
        load_serve_config({"token": TOKEN, "torch_threads": 0})
    assert build_parser().parse_args(["serve", "--torch-threads", "1"]).torch_threads == 1
    assert build_parser().parse_args(["serve"]).torch_threads is None


async def test_loading_the_model_sets_torchs_threads_first() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    try:
        adapter = await load_adapter(EngineRecipe(model="tiny-random", torch_threads=target))
        assert adapter.tokens_per_frame > 0
        assert torch.get_num_threads() == target
        # Left alone by default.
        torch.set_num_threads(before)
        await load_adapter(EngineRecipe(model="tiny-random"))
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
