"""Choosing a device, finding a model's files, and building the right adapter for it."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import torch

from errors import ConfigError, ModelUnavailable
from models.adapter import ModelAdapter
from models.registry import (
    DEFAULT_MODEL,
    DEMO,
    DEMO_DIR,
    TINY_BUDGET,
    FamilySpec,
    builtin_names,
    family,
    model_types,
    parse_builtin,
)

__all__ = ["DEFAULT_MODEL", "Placement", "build_random", "choose_placement", "load_model", "resolve_model_dir"]

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


def build_random(
    spec: FamilySpec, size: str, placement: Placement, *, seed: int = 0, model_id: str = ""
) -> ModelAdapter:
    """An adapter over a ``spec`` model with random weights, built in code: its tiny configuration
    (``size="tiny"``) or the dimensions of its published model (``"real"``, for benchmarks: timing does not
    depend on weight values). The tokenizer is the family's byte tokenizer; the text is meaningless."""
    import transformers

    if placement.load_4bit:
        raise ConfigError(f"4-bit loading applies to models loaded from files, not to the built-in {model_id!r}")
    tok = spec.tiny_tokenizer()
    config = spec.tiny_config(tok) if size == "tiny" else spec.real_config(tok)
    torch.manual_seed(seed)
    # Built directly on the device in its dtype: a 7B model never exists in float32 on the host.
    with torch.device(placement.device):
        model = getattr(transformers, spec.model_class)._from_config(
            config, attn_implementation=placement.attn, dtype=placement.dtype
        )
    options = dict(spec.tiny_options) if size == "tiny" else {}
    budget = TINY_BUDGET if size == "tiny" else spec.default_budget
    name = model_id or f"{'tiny-random' if size == 'tiny' else 'random'}-{spec.model_type}"
    return spec.adapter(model, tok, name, default_budget=budget, mean=spec.mean, std=spec.std, **options)


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
        "--model demo (a small model shipped with livesight: it answers about the built-in demo scene only) "
        "or --model tiny-random (random weights: it works end to end but produces meaningless text)."
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


def _normalisation(path: str, spec: FamilySpec) -> dict[str, Any]:
    """The model's own image mean and std from its preprocessor config, else the family default."""
    mean, std = spec.mean, spec.std
    pre = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre) as f:
            data = json.load(f)
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return {"mean": tuple(mean), "std": tuple(std)}


def load_model(model_id: str, placement: Placement, *, seed: int = 0) -> ModelAdapter:
    """Build the adapter for ``model_id``: a built-in random model, a local directory or a hub id."""
    builtin = parse_builtin(model_id)
    if builtin is not None:
        model_type, size = builtin
        return build_random(family(model_type), size, placement, seed=seed, model_id=model_id)
    if model_id == DEMO:
        if not (DEMO_DIR / "model.safetensors").is_file():
            raise ModelUnavailable(
                f"the demo model's files are missing from {DEMO_DIR}: reinstall livesight, or regenerate them with "
                "python -m train.demo_model",
                retryable=False,
            )
        path = str(DEMO_DIR)
    else:
        path = resolve_model_dir(model_id)
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    try:
        spec = family(config.model_type)
    except KeyError:
        raise ModelUnavailable(
            f"model {model_id!r} is a {config.model_type!r} model; supported families: "
            f"{', '.join(model_types())} (built-in: {', '.join(builtin_names())})",
            retryable=False,
        ) from None
    model = _from_pretrained(getattr(transformers, spec.model_class), path, placement)
    tokenizer = AutoTokenizer.from_pretrained(path)
    budget = TINY_BUDGET if model_id == DEMO else spec.default_budget
    return spec.adapter(model, tokenizer, model_id, default_budget=budget, **_normalisation(path, spec))
