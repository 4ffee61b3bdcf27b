"""``livesight serve``: listen first (health checks see ``starting``), load the model, start the streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from engine.api import EngineAPI
from engine.build import EngineRecipe, build_engine, load_adapter, open_archive
from engine.engine import EngineSettings
from errors import ConfigError, LivesightError
from livesight.config import ServeConfig
from store.archive import Archive
from stream.policy import SourcePolicy
from web.auth import Authenticator
from web.server import WS_PATH, App, HostCheck, Limits

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
            ),
            device=cfg.device,
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
            single = build_engine(recipe, adapter, archive, observer=app.metrics)
            engine = single
            await single.start(cfg.sources)
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
            if archive is not None:
                await asyncio.to_thread(archive.close)  # what is queued is written before we go


def _retention(cfg: ServeConfig) -> str:
    age = "no age limit" if cfg.retain_s is None else f"{cfg.retain_s / 3600:g} h"
    size = "" if cfg.retain_bytes is None else f", {cfg.retain_bytes.human_readable()} per stream"
    return age + size


def _any_address(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")
