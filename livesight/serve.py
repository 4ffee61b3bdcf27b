"""``livesight serve``: listen first (health checks see ``starting``), load the model, start the streams."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal

from engine.engine import Engine, EngineSettings
from errors import ConfigError, LivesightError
from livesight.config import ServeConfig
from models.loader import choose_placement, load_model
from stream.factory import make_source
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
    engine: Engine | None = None
    try:
        placement = choose_placement(cfg.device, load_4bit=cfg.load_4bit)
        log.info("loading model %s on %s", cfg.model, placement.describe())
        try:
            adapter = await asyncio.to_thread(load_model, cfg.model, placement)
        except LivesightError as exc:
            app.failure = exc.message
            raise
        settings = EngineSettings(
            fps=cfg.fps,
            budget=cfg.budget,
            max_queue=cfg.max_queue,
            max_streams=cfg.max_streams,
            ended_ttl_s=cfg.ended_ttl_s,
        )
        engine = Engine(adapter, settings, functools.partial(make_source, lossless=cfg.lossless), observer=app.metrics)
        await engine.start(cfg.sources)
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


def _any_address(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")
