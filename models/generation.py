"""Answers one token at a time, several at once: the state of one answer, and one decode step for many.

An answer begins with one prefill of what follows the cached prefix (recalled clips, the newest frame in
detail, the question) on a *fork* of the prefix's cache: the fork shares the prefix's key/value tensors,
and since a cache update concatenates into new tensors, neither side ever changes the other. So the
prefix can be brought up to new frames while answers on it are under way, and several answers on one
stream never share a cache.

After that, :func:`decode` moves any number of answers one token on in a single forward pass: their
caches (of different lengths) are stacked with left padding that an attention mask hides, each row with
its own positions. One step for four answers costs about what one step for one costs on a GPU (and much
less than four on a CPU), and an engine that steps all active answers between other work never lets one
answer hold the others for more than a step. Greedy decoding: the same tokens as one answer at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from models.adapter import Usage


def fork(cache: DynamicCache) -> DynamicCache:
    """A cache sharing ``cache``'s tensors: appending to either leaves the other as it was (a transformers
    cache update concatenates into new tensors, and a crop slices)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out


class TextStream:
    """Token ids -> text pieces as soon as they decode to whole characters (never half a UTF-8 character)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._sent = ""

    def push(self, token: int) -> str:
        """The new text that ``token`` completes ("" while a character is still being spelled)."""
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not (len(text) > len(self._sent) and text.startswith(self._sent)):
            return ""
        piece, self._sent = text[len(self._sent) :], text
        return piece

    def flush(self) -> str:
        """Whatever is left once no token follows."""
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text != self._sent and text.startswith(self._sent):
            piece, self._sent = text[len(self._sent) :], text
            return piece
        return ""


class TextPieces(Iterator[str]):
    """Token ids -> text pieces (:class:`TextStream`); ``usage.completion`` counts the ids read
    (:class:`~models.adapter.CountsUsage`)."""

    def __init__(self, tokenizer: Any, tokens: Iterable[int], usage: Usage | None = None) -> None:
        self.usage = usage if usage is not None else Usage()
        self._pieces = self._decode(TextStream(tokenizer), tokens)

    def __next__(self) -> str:
        return next(self._pieces)

    def _decode(self, stream: TextStream, tokens: Iterable[int]) -> Iterator[str]:
        for token in tokens:
            self.usage.completion += 1
            if piece := stream.push(token):
                yield piece
        if piece := stream.flush():
            yield piece


@dataclass(eq=False)
class Generation:
    """One answer under way (see the module doc). ``token`` is the token chosen last and not yet fed back;
    ``piece`` the text the last step completed; ``done`` once the answer ended (a stop token, the token
    limit, or :meth:`stop`)."""

    cache: DynamicCache
    position: int  # where the next token goes
    remaining: int  # tokens it may still generate
    stops: frozenset[int]
    text: TextStream
    usage: Usage = field(default_factory=Usage)
    token: int | None = None
    piece: str = ""
    done: bool = False
    ids: list[int] = field(default_factory=list)

    def choose(self, logits: torch.Tensor) -> None:
        """Take the next token from ``[V]`` logits (greedy); ends the answer on a stop token or the limit."""
        self.piece = ""
        if self.done:
            return
        token = int(logits.argmax())
        if token in self.stops or self.remaining <= 0:
            self.finish()
            return
        self.token = token
        self.remaining -= 1
        self.usage.completion += 1
        self.ids.append(token)
        self.piece = self.text.push(token)

    def finish(self) -> None:
        self.piece = self.text.flush()
        self.token = None
        self.done = True

    def stop(self) -> None:
        """End the answer now (cancelled); its cache can go."""
        self.finish()
        self.piece = ""


class Decoder(Protocol):
    """What :func:`decode` needs of an adapter."""

    device: torch.device

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor: ...
    def positions(self, start: int, length: int) -> torch.Tensor: ...
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        *,
        all_logits: bool,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@torch.inference_mode()
def decode(model: Decoder, gens: Sequence[Generation]) -> None:
    """Move every unfinished answer of ``gens`` one token on, in one forward pass (see the module doc)."""
    live = [g for g in gens if not g.done and g.token is not None]
    if not live:
        return
    ids = torch.tensor([g.token for g in live], device=model.device)
    embeds = model.embed_ids(ids).unsqueeze(1)  # [n, 1, D]
    positions = torch.cat([model.positions(g.position, 1) for g in live], dim=-2)  # [n, 1] or [3, n, 1]
    if len(live) == 1:
        logits = model.forward(embeds, positions, live[0].cache, all_logits=False)
    else:
        cache, mask, pads = _stack([g.cache for g in live], model.device)
        logits = model.forward(embeds, positions, cache, all_logits=False, attention_mask=mask)
        for g, layers in zip(live, _unstack(cache, pads), strict=True):
            g.cache = _with_layers(g.cache, layers)
    for i, g in enumerate(live):
        g.position += 1
        g.choose(logits[i, -1])


def _stack(caches: Sequence[DynamicCache], device: torch.device) -> tuple[DynamicCache, torch.Tensor, list[int]]:
    """One cache for a batch: each cache's layers left-padded to the longest, stacked on the batch axis;
    and the ``[n, L + 1]`` attention mask (padding hidden, the new token seen)."""
    lengths = [_length(c) for c in caches]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    out = fork(caches[0])
    for k, layer in enumerate(out.layers):
        if not getattr(layer, "is_initialized", False):
            continue
        keys, values = [], []
        for cache, pad in zip(caches, pads, strict=True):
            src = cache.layers[k]
            keys.append(torch.nn.functional.pad(src.keys, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(src.values, (0, 0, pad, 0)))
        layer.keys, layer.values = torch.cat(keys), torch.cat(values)
    mask = torch.ones(len(caches), longest + 1, dtype=torch.long, device=device)
    for i, pad in enumerate(pads):
        mask[i, :pad] = 0
    return out, mask, pads


def _unstack(cache: DynamicCache, pads: Sequence[int]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor] | None]]:
    """Each row's layers back out of a stacked cache, without its padding (views, no copies)."""
    for i, pad in enumerate(pads):
        rows: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for layer in cache.layers:
            if getattr(layer, "is_initialized", False):
                rows.append((layer.keys[i : i + 1, :, pad:], layer.values[i : i + 1, :, pad:]))
            else:
                rows.append(None)
        yield rows


def _with_layers(cache: DynamicCache, layers: Sequence[tuple[torch.Tensor, torch.Tensor] | None]) -> DynamicCache:
    out = fork(cache)
    for layer, kv in zip(out.layers, layers, strict=True):
        if kv is not None:
            layer.keys, layer.values = kv
    return out


def _length(cache: DynamicCache) -> int:
    return max(
        (int(layer.keys.shape[-2]) for layer in cache.layers if getattr(layer, "is_initialized", False)), default=0
    )
