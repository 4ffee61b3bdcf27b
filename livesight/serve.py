"""``livesight serve``: listen first (health checks see ``starting``), load the model, start the streams."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sqlite3
from pathlib import Path

from engine.engine import Engine, EngineSettings
from errors import ConfigError, LivesightError
from livesight.config import ServeConfig
from models.adapter import ModelAdapter
from models.loader import choose_placement, load_model
from store.archive import Archive
from store.events import EventStore
from stream.factory import make_source
from stream.policy import SourcePolicy
from web.auth import Authenticator
from web.server import WS_PATH, App, HostCheck, Limits
from web.webhooks import Webhooks

log = logging.getLogger("livesight")


async def serve(cfg: ServeConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM). Raises :class:`LivesightError` on a startup failure."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not main thread / not supported
            loop.add_signal_handler(sig, stop.set)

    policy = SourcePolicy(cfg.allow_files, cfg.allow_hosts)  # ConfigError for an entry that is not one
    app = App(
        Authenticator(cfg.token, cfg.viewers),
        cfg.model,
        hosts=HostCheck([*cfg.server_names, *([] if _any_address(cfg.host) else [cfg.host])]),
        limits=Limits(per_address=cfg.max_connections_per_address, total=cfg.max_connections),
        policy=policy,
        metrics_public=cfg.metrics_public,
    )
    try:
        await app.listen(cfg.host, cfg.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from exc
    base = f"{cfg.host}:{app.port()}"
    log.info("listening on http://%s (websocket ws://%s%s)", base, base, WS_PATH)
    engine: Engine | None = None
    archive: Archive | None = None
    events: EventStore | None = None
    webhooks: Webhooks | None = None
    try:
        placement = choose_placement(cfg.device, load_4bit=cfg.load_4bit)
        log.info("loading model %s on %s", cfg.model, placement.describe())
        try:
            adapter = await asyncio.to_thread(load_model, cfg.model, placement)
        except LivesightError as exc:
            app.failure = exc.message
            raise
        zone = cfg.zone()
        adapter.timezone = zone  # live streams' time labels read in the server's time zone
        settings = EngineSettings(
            fps=cfg.fps,
            budget=cfg.budget,
            max_queue=cfg.max_queue,
            max_streams=cfg.max_streams,
            max_active=cfg.max_active,
            ended_ttl_s=cfg.ended_ttl_s,
            timezone=zone,
            recall_tokens=cfg.recall_tokens,
            captions=tuple(cfg.captions.items()),
        )
        archive = await _open_archive(cfg, adapter)
        if archive is not None:
            events = await _open_events(cfg)
        engine = Engine(
            adapter,
            settings,
            functools.partial(make_source, lossless=cfg.lossless),
            archive=archive,
            observer=app.metrics,
            events=events,
        )
        webhooks = _start_webhooks(cfg, engine)
        app.metrics.webhooks = webhooks
        await engine.start(cfg.sources, cfg.watches)
        _warn_unknown_streams(cfg, engine)
        app.engine = engine
        log.info(
            "ready: model %s, %d visual tokens per frame, budget %d tokens per stream, streams: %s",
            adapter.model_id,
            adapter.tokens_per_frame,
            engine.budget,
            ", ".join(engine.stream_names()),
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        try:
            if engine is not None:
                # Every waiting or running question hears why before the connections close.
                await engine.shutdown()
                await app.drain()
            await app.close()
        finally:
            if engine is not None:
                await engine.close()
            if webhooks is not None:
                await asyncio.to_thread(webhooks.close)
            if events is not None:
                await asyncio.to_thread(events.close)  # what is queued is written before we go
            if archive is not None:
                await asyncio.to_thread(archive.close)


async def _open_archive(cfg: ServeConfig, adapter: ModelAdapter) -> Archive | None:
    """The archive under ``--data`` (None with ``--no-archive``), tagged with the model that fills it."""
    if cfg.data_dir is None:
        return None
    hidden = getattr(adapter, "model", None)
    width = getattr(getattr(getattr(hidden, "config", None), "text_config", None), "hidden_size", "?")
    archive = Archive(
        Path(cfg.data_dir),
        model=f"{adapter.model_id}|{adapter.tokens_per_frame}|{width}",
        retain_s=cfg.retain_s,
        retain_bytes=None if cfg.retain_bytes is None else int(cfg.retain_bytes),
    )
    try:
        await asyncio.to_thread(archive.start)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the archive in {cfg.data_dir!r}: {exc}") from exc
    log.info("archive: %s (retention %s)", archive.path, _retention(cfg))
    return archive


async def _open_events(cfg: ServeConfig) -> EventStore:
    """The timeline (watches, events, snapshots) beside the archive, under the same retention."""
    assert cfg.data_dir is not None
    events = EventStore(Path(cfg.data_dir), retain_s=cfg.retain_s)
    try:
        await asyncio.to_thread(events.start)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the event store in {cfg.data_dir!r}: {exc}") from exc
    return events


def _start_webhooks(cfg: ServeConfig, engine: Engine) -> Webhooks:
    """Alert delivery to ``--webhook`` URLs and to each watch's own (a watch's URL is looked up when its
    alert is delivered, so a watch added later is served too)."""

    def watch_url(watch_id: int) -> str | None:
        w = engine.watching.get(watch_id)
        return None if w is None else w.spec.webhook

    webhooks = Webhooks(cfg.webhooks, watch_url=watch_url)
    webhooks.start()
    engine.listen(webhooks.on_event)
    if cfg.webhooks:
        log.info("webhooks: every alert is POSTed to %d URL(s)", len(cfg.webhooks))
    return webhooks


def _warn_unknown_streams(cfg: ServeConfig, engine: Engine) -> None:
    names = set(engine.stream_names())
    for w in cfg.watches:
        if w.stream not in names:
            log.warning("watch %r names stream %r, which is not running (yet): it waits for it", w.condition, w.stream)


def _retention(cfg: ServeConfig) -> str:
    age = "no age limit" if cfg.retain_s is None else f"{cfg.retain_s / 3600:g} h"
    size = "" if cfg.retain_bytes is None else f", {cfg.retain_bytes.human_readable()} per stream"
    return age + size


def _any_address(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")
