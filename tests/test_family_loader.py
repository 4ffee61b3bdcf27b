"""Choosing the adapter by ``model_type``, loading from a model directory, real-size configs, 4-bit errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from livesight.errors import ConfigError, ModelUnavailable
from models import llava_next_video, llava_onevision, qwen2_5_vl, qwen3_vl, smolvlm
from models.context import EmbeddingContext
from models.loader import BUILTIN, FAMILIES, choose_placement, load_model
from tests.families import frames, segments

MODULES = {
    "smolvlm": smolvlm,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "llava_onevision": llava_onevision,
    "llava_next_video": llava_next_video,
}
REAL_SIZE = [
    (smolvlm, smolvlm.smolvlm2_256m_config, 64),
    (qwen2_5_vl, qwen2_5_vl.qwen2_5_vl_3b_config, 256),
    (qwen3_vl, qwen3_vl.qwen3_vl_2b_config, 196),
    (llava_onevision, llava_onevision.llava_onevision_0_5b_config, 196),
    (llava_next_video, llava_next_video.llava_next_video_7b_config, 144),
]


def test_every_family_is_registered_with_a_builtin() -> None:
    assert set(FAMILIES) == set(MODULES)
    for family in MODULES:
        if family != "smolvlm":
            assert f"tiny-random-{family}" in BUILTIN
    assert "tiny-random" in BUILTIN


@pytest.mark.parametrize("family", sorted(MODULES))
def test_family_loads_from_a_model_directory(family: str, tmp_path: Path) -> None:
    mod = MODULES[family]
    tok = mod.tiny_tokenizer()
    model = mod.random_model(mod.tiny_config(tok), 0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ad = load_model(str(tmp_path), choose_placement("cpu"))
    assert isinstance(ad, EmbeddingContext)
    assert type(ad.model) is type(model)
    assert ad.model.config.model_type == family
    prefix = ad.build_prefix(segments(ad, frames(1)))
    logits = ad.question_logits(prefix, [], "Hi?")
    assert torch.isfinite(logits).all()


def test_unsupported_model_type_lists_the_supported_families(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelUnavailable) as info:
        load_model(str(tmp_path), choose_placement("cpu"))
    assert not info.value.retryable
    for family in MODULES:
        assert family in info.value.message
    assert "'bert'" in info.value.message


@pytest.mark.parametrize(("mod", "make", "tokens"), REAL_SIZE, ids=[m.__name__ for m, _, _ in REAL_SIZE])
def test_real_size_configs_build(mod, make, tokens: int) -> None:
    """The benchmark's real-size configs are valid (built on the meta device: no memory, no weights)."""
    config = make(mod.tiny_tokenizer())
    with torch.device("meta"):
        model = mod.random_model(config, 0)
    params = sum(p.numel() for p in model.parameters())
    assert params > 1e8
    vc = config.vision_config
    if mod in (qwen2_5_vl, qwen3_vl):
        unit = vc.patch_size * vc.spatial_merge_size
        assert (448 // unit) ** 2 == tokens
    elif mod is smolvlm:
        assert (vc.image_size // vc.patch_size) ** 2 // config.scale_factor**2 == tokens
    else:
        adapter = (
            llava_next_video.LlavaNextVideoAdapter if mod is llava_next_video else llava_onevision.LlavaOneVisionAdapter
        )
        assert adapter.frame_tokens(config) == tokens


def test_4bit_without_bitsandbytes_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"livesight\[bnb\]") as info:
        choose_placement("auto", load_4bit=True)
    assert not info.value.retryable


def test_4bit_without_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA"):
        choose_placement("auto", load_4bit=True)


def test_4bit_is_refused_for_builtin_random_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.loader import Placement

    placement = Placement(torch.device("cpu"), torch.float32, "sdpa", load_4bit=True)
    with pytest.raises(ConfigError, match="built-in"):
        load_model("tiny-random-qwen2_5_vl", placement)


def test_cli_serve_with_4bit_on_a_builtin_fails_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    from livesight.cli import main

    code = main(["serve", "--model", "tiny-random-qwen3_vl", "--load-4bit", "--port", "0", "--token", "x" * 12], {})
    assert code == 2
    err = capsys.readouterr().err
    assert "4-bit" in err
    assert "bnb" in err or "CUDA" in err or "built-in" in err
