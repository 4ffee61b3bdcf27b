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
from models.adapter import ModelAdapter
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

    def describe(self) -> str:
        return f"{self.device.type} {str(self.dtype).removeprefix('torch.')} {self.attn}"


def choose_placement(device: str = "auto") -> Placement:
    """CUDA with bf16 (fp16 where bf16 is unsupported) and flash-attention 2 when installed, else sdpa;
    CPU in float32."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not use_cuda:
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device")
    if not use_cuda:
        return Placement(torch.device("cpu"), torch.float32, "sdpa")
    dev = torch.device("cuda" if device == "auto" else device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"
    return Placement(dev, dtype, attn)


def _builtin_tiny(placement: Placement, seed: int) -> ModelAdapter:
    tok = tiny_tokenizer()
    model = random_model(tiny_config(tok), seed).to(placement.device, placement.dtype)
    return SmolVLMAdapter(model, tok, TINY, default_budget=1024)


def _builtin_smolvlm2_256m(placement: Placement, seed: int) -> ModelAdapter:
    tok = tiny_tokenizer()
    model = random_model(smolvlm2_256m_config(tok), seed).to(placement.device, placement.dtype)
    return SmolVLMAdapter(model, tok, "random-smolvlm2-256m", default_budget=4096)


#: Models built in code with random weights: no download, meaningless text.
BUILTIN: dict[str, Callable[[Placement, int], ModelAdapter]] = {
    TINY: _builtin_tiny,
    "random-smolvlm2-256m": _builtin_smolvlm2_256m,
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


def _load_smolvlm(path: str, model_id: str, placement: Placement, config: Any) -> ModelAdapter:
    from transformers import AutoTokenizer, SmolVLMForConditionalGeneration

    model = SmolVLMForConditionalGeneration.from_pretrained(
        path, dtype=placement.dtype, attn_implementation=placement.attn
    ).to(placement.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    pre = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre) as f:
            spec = json.load(f)
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    return SmolVLMAdapter(model, tokenizer, model_id, default_budget=4096, mean=mean, std=std)


#: Hub model families by ``config.model_type``.
FAMILIES: dict[str, Callable[[str, str, Placement, Any], ModelAdapter]] = {
    "smolvlm": _load_smolvlm,
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
