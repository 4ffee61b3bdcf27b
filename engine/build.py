"""Building an engine from plain values, in whichever process runs it: ``livesight serve`` (one process) and
every shard of ``serve --ray`` (a Ray actor) build theirs with the same three steps."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.engine import Engine, EngineSettings
from engine.observer import EngineObserver
from errors import ConfigError
from models.adapter import ModelAdapter
from models.loader import choose_placement, load_model
from store.archive import Archive
from store.events import EventStore
from stream.factory import make_source
from stream.source import Source
from stream.spec import SourceSpec

log = logging.getLogger("livesight")


@dataclass(frozen=True, slots=True)
class EngineRecipe:
    """What an engine is built from; picklable, so a shard can be sent it. ``settings.timezone`` is set
    (the server's zone), so every process tells time the same way."""

    model: str
    settings: EngineSettings = field(default_factory=EngineSettings)
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    torch_threads: int | None = None  # torch's CPU threads in this process; None: torch's choice
    load_4bit: bool = False
    lossless: bool = False  # files and the demo read as fast as the model ingests (--fast)
    data_dir: str | None = None  # the archive's directory; None: no archive
    retain_s: float | None = 24 * 3600.0
    retain_bytes: int | None = None


async def load_adapter(recipe: EngineRecipe) -> ModelAdapter:
    """The model on its device (blocking work in a thread). Raises :class:`~errors.ModelUnavailable` and
    :class:`~errors.ConfigError`."""
    if recipe.torch_threads is not None:
        # Process-wide, before the model loads. On a 2-core machine with 32 cameras, torch's second thread
        # spun waiting for the first while the readers needed the core: 24 cameras within 2 s against 36
        # with one thread (bench/scale.py, docs/benchmarks.md).
        torch.set_num_threads(recipe.torch_threads)
    placement = choose_placement(recipe.device, load_4bit=recipe.load_4bit)
    log.info("loading model %s on %s", recipe.model, placement.describe())
    adapter = await asyncio.to_thread(load_model, recipe.model, placement)
    if recipe.settings.timezone is not None:
        adapter.timezone = recipe.settings.timezone  # live streams' time labels read in the server's zone
    return adapter


async def open_archive(recipe: EngineRecipe, adapter: ModelAdapter) -> Archive | None:
    """The archive under ``data_dir`` (None without one), tagged with the model that fills it. Several
    processes may open the same one (SQLite WAL): the shards of ``serve --ray`` on one machine share it."""
    if recipe.data_dir is None:
        return None
    hidden = getattr(adapter, "model", None)
    width = getattr(getattr(getattr(hidden, "config", None), "text_config", None), "hidden_size", "?")
    archive = Archive(
        Path(recipe.data_dir),
        model=f"{adapter.model_id}|{adapter.tokens_per_frame}|{width}",
        retain_s=recipe.retain_s,
        retain_bytes=recipe.retain_bytes,
    )
    try:
        await asyncio.to_thread(archive.start)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the archive in {recipe.data_dir!r}: {exc}") from exc
    return archive


def build_engine(
    recipe: EngineRecipe,
    adapter: ModelAdapter,
    archive: Archive | None,
    *,
    observer: EngineObserver | None = None,
    make: Callable[[SourceSpec, float], Source] | None = None,
    events: EventStore | None = None,
) -> Engine:
    """An unstarted engine; ``make`` builds sources (default: :func:`stream.factory.make_source`);
    ``events``: where watches and their events are kept."""
    return Engine(
        adapter,
        recipe.settings,
        make or functools.partial(make_source, lossless=recipe.lossless),
        archive=archive,
        observer=observer,
        events=events,
    )
