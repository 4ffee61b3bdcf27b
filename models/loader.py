"""Choosing a device, finding a model's files, and building the right adapter for it."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import torch

from livesight.errors import ConfigError, ModelUnavailable
from models import llava_next_video, llava_onevision, qwen2_5_vl, qwen3_vl
from models.adapter import ModelAdapter
from models.llava_next_video import LlavaNextVideoAdapter
from models.llava_onevision import LlavaOneVisionAdapter
from models.qwen2_5_vl import QwenVLAdapter
from models.qwen3_vl import Qwen3VLAdapter
from models.smolvlm import (
    SmolVLMAdapter,
    random_model,
    smolvlm2_256m_config,
    tiny_config,
    tiny_tokenizer,
)

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
TINY = "tiny-random"
#: Files a model needs; skips ONNX exports and other large extras some repos carry.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and how the model runs, chosen once at startup."""

    device: torch.device
    dtype: torch.dtype
    attn: str  # transformers attn_implementation
    load_4bit: bool = False  # weights quantized to 4 bits by bitsandbytes (CUDA only)

    def describe(self) -> str:
        quant = " 4-bit" if self.load_4bit else ""
        return f"{self.device.type} {str(self.dtype).removeprefix('torch.')} {self.attn}{quant}"


def choose_placement(device: str = "auto", *, load_4bit: bool = False) -> Placement:
    """CUDA with bf16 (fp16 where bf16 is unsupported) and flash-attention 2 when installed, else sdpa;
    CPU in float32. ``load_4bit`` needs bitsandbytes (``pip install 'livesight[bnb]'``) and CUDA."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not use_cuda:
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device")
    if load_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("4-bit loading needs bitsandbytes: pip install 'livesight[bnb]'")
        if not use_cuda:
            raise ConfigError("4-bit loading needs a CUDA device (bitsandbytes 4-bit kernels run on CUDA)")
    if not use_cuda:
        return Placement(torch.device("cpu"), torch.float32, "sdpa")
    dev = torch.device("cuda" if device == "auto" else device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"
    return Placement(dev, dtype, attn, load_4bit)


def _no_4bit(placement: Placement, model_id: str) -> None:
    if placement.load_4bit:
        raise ConfigError(f"4-bit loading applies to models loaded from files, not to the built-in {model_id!r}")


def _builtin_tiny(placement: Placement, seed: int) -> ModelAdapter:
    _no_4bit(placement, TINY)
    tok = tiny_tokenizer()
    model = random_model(tiny_config(tok), seed).to(placement.device, placement.dtype)
    return SmolVLMAdapter(model, tok, TINY, default_budget=1024)


def _builtin_smolvlm2_256m(placement: Placement, seed: int) -> ModelAdapter:
    _no_4bit(placement, "random-smolvlm2-256m")
    tok = tiny_tokenizer()
    model = random_model(smolvlm2_256m_config(tok), seed).to(placement.device, placement.dtype)
    return SmolVLMAdapter(model, tok, "random-smolvlm2-256m", default_budget=4096)


def _builtin(
    name: str, family: Any, adapter: Callable[..., ModelAdapter], **kwargs: Any
) -> Callable[..., ModelAdapter]:
    """A built-in tiny random model of ``family`` (a module with ``tiny_tokenizer``, ``tiny_config``,
    ``random_model``)."""

    def build(placement: Placement, seed: int) -> ModelAdapter:
        _no_4bit(placement, name)
        tok = family.tiny_tokenizer()
        model = family.random_model(family.tiny_config(tok), seed).to(placement.device, placement.dtype)
        return adapter(model, tok, name, default_budget=1024, **kwargs)

    return build


#: Models built in code with random weights: no download, meaningless text.
BUILTIN: dict[str, Callable[[Placement, int], ModelAdapter]] = {
    TINY: _builtin_tiny,
    "random-smolvlm2-256m": _builtin_smolvlm2_256m,
    "tiny-random-qwen2_5_vl": _builtin("tiny-random-qwen2_5_vl", qwen2_5_vl, QwenVLAdapter, size=64),
    "tiny-random-qwen3_vl": _builtin("tiny-random-qwen3_vl", qwen3_vl, Qwen3VLAdapter, size=64),
    "tiny-random-llava_onevision": _builtin("tiny-random-llava_onevision", llava_onevision, LlavaOneVisionAdapter),
    "tiny-random-llava_next_video": _builtin("tiny-random-llava_next_video", llava_next_video, LlavaNextVideoAdapter),
}


def resolve_model_dir(model_id: str, *, probe_timeout: float = 3.0) -> str:
    """A local directory holding ``model_id``'s files: the path itself, the hub cache, or a download.

    Fails fast (one short connection probe, no retry loop) when the files are neither cached nor
    reachable, with a message that says what is missing and what to do.
    """
    if os.path.isdir(model_id):
        return model_id
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return str(snapshot_download(model_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except HFValidationError as exc:
        raise ConfigError(f"model {model_id!r} is neither a local directory nor a hub id: {exc}") from exc
    except LocalEntryNotFoundError:
        pass
    where = f"the Hugging Face cache at {constants.HF_HUB_CACHE}"
    remedy = (
        f"Connect this machine to {constants.ENDPOINT} once so the model is downloaded and cached, "
        f"copy a downloaded model directory here and pass its path to --model, or run offline with "
        f"--model {TINY} (a tiny random model: it works end to end but produces meaningless text)."
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"model {model_id!r} is not in {where}, and HF_HUB_OFFLINE is set. {remedy}", retryable=False
        )
    host = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=probe_timeout).close()
    except OSError as exc:
        raise ModelUnavailable(
            f"model {model_id!r} is not in {where}, and {constants.ENDPOINT} cannot be reached ({exc}). {remedy}",
            retryable=True,
        ) from exc
    try:
        return str(snapshot_download(model_id, allow_patterns=HUB_PATTERNS))
    except OSError as exc:
        raise ModelUnavailable(f"downloading model {model_id!r} failed: {exc}. {remedy}", retryable=True) from exc


def _from_pretrained(cls: Any, path: str, placement: Placement) -> Any:
    """Load weights in the placement's dtype and attention; 4-bit through bitsandbytes when asked."""
    if not placement.load_4bit:
        return cls.from_pretrained(path, dtype=placement.dtype, attn_implementation=placement.attn).to(placement.device)
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=placement.dtype)
    return cls.from_pretrained(
        path,
        dtype=placement.dtype,
        attn_implementation=placement.attn,
        quantization_config=quant,
        device_map={"": placement.device},
    )


def _normalisation(path: str, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """The model's own image mean and std from its preprocessor config, else the family default."""
    pre = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre) as f:
            spec = json.load(f)
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    return {"mean": tuple(mean), "std": tuple(std)}


def _family(
    cls_name: str, adapter: Callable[..., ModelAdapter], mean: tuple[float, ...], std: tuple[float, ...], budget: int
) -> Callable[[str, str, Placement, Any], ModelAdapter]:
    def load(path: str, model_id: str, placement: Placement, config: Any) -> ModelAdapter:
        import transformers
        from transformers import AutoTokenizer

        model = _from_pretrained(getattr(transformers, cls_name), path, placement)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return adapter(model, tokenizer, model_id, default_budget=budget, **_normalisation(path, mean, std))

    return load


#: Hub model families by ``config.model_type``.
FAMILIES: dict[str, Callable[[str, str, Placement, Any], ModelAdapter]] = {
    "smolvlm": _family("SmolVLMForConditionalGeneration", SmolVLMAdapter, (0.5,) * 3, (0.5,) * 3, 4096),
    "qwen2_5_vl": _family(
        "Qwen2_5_VLForConditionalGeneration", QwenVLAdapter, qwen2_5_vl.CLIP_MEAN, qwen2_5_vl.CLIP_STD, 8192
    ),
    "qwen3_vl": _family("Qwen3VLForConditionalGeneration", Qwen3VLAdapter, qwen3_vl.MEAN, qwen3_vl.STD, 8192),
    "llava_onevision": _family(
        "LlavaOnevisionForConditionalGeneration",
        LlavaOneVisionAdapter,
        llava_onevision.SIGLIP_MEAN,
        llava_onevision.SIGLIP_STD,
        8192,
    ),
    "llava_next_video": _family(
        "LlavaNextVideoForConditionalGeneration",
        LlavaNextVideoAdapter,
        llava_next_video.CLIP_MEAN,
        llava_next_video.CLIP_STD,
        4096,
    ),
}


def load_model(model_id: str, placement: Placement, *, seed: int = 0) -> ModelAdapter:
    """Build the adapter for ``model_id``: a built-in random model, a local directory or a hub id."""
    if model_id in BUILTIN:
        return BUILTIN[model_id](placement, seed)
    path = resolve_model_dir(model_id)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    loader = FAMILIES.get(config.model_type)
    if loader is None:
        raise ModelUnavailable(
            f"model {model_id!r} is a {config.model_type!r} model; supported families: "
            f"{', '.join(sorted(FAMILIES))} (built-in: {', '.join(sorted(BUILTIN))})",
            retryable=False,
        )
    return loader(path, model_id, placement, config)
