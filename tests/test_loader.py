"""Choosing the adapter by ``model_type``, loading from a model directory, real-size configs, 4-bit errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from errors import ConfigError, ModelUnavailable
from models.context import EmbeddingContext
from models.families.llava_onevision import LlavaOneVisionAdapter
from models.loader import build_random, choose_placement, load_model
from models.registry import builtin_names, family, model_types, parse_builtin
from tests.families import frames, segments

#: Visual tokens per frame of each family's real-size configuration.
REAL_TOKENS = {"smolvlm": 64, "qwen2_5_vl": 256, "qwen3_vl": 196, "llava_onevision": 196, "llava_next_video": 144}


def test_every_family_is_registered_with_builtins() -> None:
    assert set(model_types()) == set(REAL_TOKENS)
    for t in model_types():
        assert family(t).model_type == t
        assert {f"tiny-random-{t}", f"random-{t}"} <= set(builtin_names())
        assert parse_builtin(f"tiny-random-{t}") == (t, "tiny")
    assert parse_builtin("tiny-random") == ("smolvlm", "tiny")
    assert parse_builtin("random-smolvlm2-256m") == ("smolvlm", "real")
    assert parse_builtin("HuggingFaceTB/SmolVLM2-256M-Video-Instruct") is None


@pytest.mark.parametrize("model_type", sorted(REAL_TOKENS))
def test_family_loads_from_a_model_directory(model_type: str, tmp_path: Path) -> None:
    spec = family(model_type)
    built = build_random(spec, "tiny", choose_placement("cpu"))
    assert isinstance(built, EmbeddingContext)
    built.model.save_pretrained(tmp_path)
    built.tokenizer.save_pretrained(tmp_path)
    ad = load_model(str(tmp_path), choose_placement("cpu"))
    assert isinstance(ad, EmbeddingContext)
    assert type(ad.model) is type(built.model)
    assert ad.model.config.model_type == model_type
    prefix = ad.build_prefix(segments(ad, frames(1)))
    logits = ad.question_logits(prefix, [], "Hi?")
    assert torch.isfinite(logits).all()


def test_unsupported_model_type_lists_the_supported_families(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelUnavailable) as info:
        load_model(str(tmp_path), choose_placement("cpu"))
    assert not info.value.retryable
    for model_type in REAL_TOKENS:
        assert model_type in info.value.message
    assert "'bert'" in info.value.message


@pytest.mark.parametrize("model_type", sorted(REAL_TOKENS))
def test_real_size_configs_build(model_type: str) -> None:
    """The benchmark's real-size configs are valid (built on the meta device: no memory, no weights)."""
    import transformers

    spec = family(model_type)
    config = spec.real_config(spec.tiny_tokenizer())
    with torch.device("meta"):
        model = getattr(transformers, spec.model_class)(config)
    params = sum(p.numel() for p in model.parameters())
    assert params > 1e8
    vc = config.vision_config
    tokens = REAL_TOKENS[model_type]
    if model_type.startswith("qwen"):
        unit = vc.patch_size * vc.spatial_merge_size
        assert (448 // unit) ** 2 == tokens
    elif model_type == "smolvlm":
        assert (vc.image_size // vc.patch_size) ** 2 // config.scale_factor**2 == tokens
    else:
        adapter = spec.adapter
        assert isinstance(adapter, type) and issubclass(adapter, LlavaOneVisionAdapter)
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
