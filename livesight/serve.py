"""``livesight serve``: listen first (health checks see ``starting``), load the model, start the streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from pathlib import Path

from engine.api import EngineAPI
from engine.build import EngineRecipe, build_engine, load_adapter, open_archive
from engine.engine import Engine, EngineSettings
from errors import ConfigError, LivesightError
from livesight.config import ServeConfig
from store.archive import Archive
from store.events import EventStore
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
    engine: EngineAPI | None = None
    archive: Archive | None = None
    events: EventStore | None = None
    webhooks: Webhooks | None = None
    try:
        zone = cfg.zone()
        recipe = EngineRecipe(
            model=cfg.model,
            settings=EngineSettings(
                fps=cfg.fps,
                budget=cfg.budget,
                max_queue=cfg.max_queue,
                max_streams=cfg.max_streams,
                max_active=cfg.max_active,
                ended_ttl_s=cfg.ended_ttl_s,
                timezone=zone,
                recall_tokens=cfg.recall_tokens,
                captions=tuple(cfg.captions.items()),
            ),
            device=cfg.device,
            torch_threads=cfg.torch_threads,
            load_4bit=cfg.load_4bit,
            lossless=cfg.lossless,
            data_dir=cfg.data_dir,
            retain_s=cfg.retain_s,
            retain_bytes=None if cfg.retain_bytes is None else int(cfg.retain_bytes),
        )
        if cfg.ray is not None:
            # Imported here: the single-process server never imports Ray (an optional extra).
            from cluster.gateway import open_gateway

            try:
                gateway = await open_gateway(
                    recipe, cfg.sources, address=cfg.ray, shards=cfg.shards, observer=app.metrics
                )
            except LivesightError as exc:
                app.failure = exc.message
                raise
            engine = gateway
            app.engine = gateway
            log.info("ready: %s", gateway.describe())
        else:
            try:
                adapter = await load_adapter(recipe)
            except LivesightError as exc:
                app.failure = exc.message
                raise
            archive = await open_archive(recipe, adapter)
            if archive is not None:
                log.info("archive: %s (retention %s)", archive.path, _retention(cfg))
                events = await _open_events(cfg)
            single = build_engine(recipe, adapter, archive, observer=app.metrics, events=events)
            engine = single
            webhooks = _start_webhooks(cfg, single)
            app.metrics.webhooks = webhooks
            await single.start(cfg.sources, cfg.watches)
            _warn_unknown_streams(cfg, single)
            app.engine = single
            log.info(
                "ready: model %s, %d visual tokens per frame, budget %d tokens per stream, streams: %s",
                adapter.model_id,
                adapter.tokens_per_frame,
                single.budget,
                ", ".join(single.stream_names()),
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
