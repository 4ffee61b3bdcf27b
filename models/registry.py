"""The one registry of model families and built-in model names, read by the loader, the CLI and the benchmarks.

A family is a module ``models/families/<model_type>.py`` that defines ``FAMILY``, a :class:`FamilySpec`:
the ``config.model_type`` it serves, its transformers class, its adapter, its chat format, its tiny and
real-size configurations, its default budget and normalisation. Adding a family is adding that one file.

This module imports neither torch nor transformers (the command line reads it to start fast): families
are listed from the file names and imported only when one is asked for.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from models.adapter import ModelAdapter
    from models.prompts import ChatFormat

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
#: Visual-token budget of the tiny built-in models.
TINY_BUDGET = 1024
#: Built-in names kept for their users: ``tiny-random`` is the tiny SmolVLM2, ``random-smolvlm2-256m`` the
#: real-size one.
ALIASES = {"tiny-random": "tiny-random-smolvlm", "random-smolvlm2-256m": "random-smolvlm"}
TINY_PREFIX, REAL_PREFIX = "tiny-random-", "random-"
#: The demo model: a small SmolVLM trained in this repository on the built-in demo scene (train/demo_model.py),
#: shipped in ``models/demo`` and loaded with ``from_pretrained`` like a downloaded model, at the tiny budget.
DEMO = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "demo"

_FAMILIES_DIR = Path(__file__).resolve().parent / "families"


@dataclass(frozen=True, slots=True)
class Tokens:
    """The special tokens of a family's built-in byte tokenizer."""

    special: tuple[str, ...]
    eos: str
    pad: str


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """Everything livesight knows about one model family (see the module doc).

    ``adapter`` is called as ``adapter(model, tokenizer, model_id, default_budget=..., mean=..., std=...,
    **options)``; ``tiny_options`` are the options of the tiny configuration (e.g. a smaller frame size).
    """

    model_type: str
    model_class: str  # the transformers class, e.g. "SmolVLMForConditionalGeneration"
    adapter: Callable[..., ModelAdapter]
    chat: ChatFormat
    tokens: Tokens
    tiny_config: Callable[[PreTrainedTokenizerBase], Any]
    real_config: Callable[[PreTrainedTokenizerBase], Any]
    real_name: str  # the published model whose dimensions real_config copies
    default_budget: int  # in-context visual tokens per stream for this family's real models
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tiny_options: Mapping[str, Any] = field(default_factory=dict)

    def tiny_tokenizer(self) -> PreTrainedTokenizerBase:
        """A working byte-level tokenizer with this family's special tokens and chat template."""
        from models.tokenizer import byte_tokenizer

        t = self.tokens
        return byte_tokenizer(t.special, eos=t.eos, pad=t.pad, chat_template=self.chat.chat_template)


def model_types() -> tuple[str, ...]:
    """The supported ``config.model_type`` values, from the family files (nothing is imported)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(_FAMILIES_DIR)]) if not m.name.startswith("_")))


def family(model_type: str) -> FamilySpec:
    """The family serving ``model_type``; ``KeyError`` if none does."""
    if model_type not in model_types():
        raise KeyError(model_type)
    spec = importlib.import_module(f"models.families.{model_type}").FAMILY
    assert isinstance(spec, FamilySpec) and spec.model_type == model_type, f"models/families/{model_type}.py"
    return spec


def builtin_names() -> tuple[str, ...]:
    """Every built-in model name: random weights built in code, nothing downloaded."""
    names = [DEMO, *ALIASES]
    for t in model_types():
        names += [TINY_PREFIX + t, REAL_PREFIX + t]
    return tuple(names)


def parse_builtin(name: str) -> tuple[str, str] | None:
    """``(model_type, size)`` of a built-in name, size ``"tiny"`` or ``"real"``; None for any other name."""
    name = ALIASES.get(name, name)
    for prefix, size in ((TINY_PREFIX, "tiny"), (REAL_PREFIX, "real")):
        if name.startswith(prefix) and name[len(prefix) :] in model_types():
            return name[len(prefix) :], size
    return None
