"""Configuration, validated once at the edge (unknown keys rejected) into plain typed values."""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.watches import WatchSpec
from errors import ConfigError
from models.registry import DEFAULT_MODEL
from stream.spec import SourceSpec, parse_source
from web.auth import Viewer


class ServeConfig(BaseModel):
    """Everything ``livesight serve`` needs. Field docs are the user-facing reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: Annotated[list[SourceSpec], Field(min_length=1, description="NAME=URL or URL, repeatable")] = Field(
        default_factory=lambda: [parse_source("demo")]
    )
    model: str = Field(DEFAULT_MODEL, min_length=1, description="hub id, local directory, or a built-in id")
    fps: float = Field(1.0, gt=0, le=30, description="frames sampled per second of stream time, per stream")
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8765, ge=0, le=65535)
    token: str = Field(
        min_length=8, max_length=512, repr=False, description="the admin token: every stream and every operation"
    )
    viewers: list[Viewer] = Field(default_factory=list, repr=False, description="tokens limited to named streams")
    server_names: list[str] = Field(
        default_factory=list, description="names clients reach this server by (Host headers); IPs and localhost always"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    torch_threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads; None: torch's choice")
    load_4bit: bool = Field(False, description="4-bit weights through bitsandbytes (CUDA, the bnb extra)")
    budget: int | None = Field(None, ge=64, le=1_000_000, description="in-context visual tokens per stream")
    lossless: bool = Field(
        False, description="read files and the demo as fast as the model ingests, losing no frame (--fast)"
    )
    max_queue: int = Field(16, ge=1, le=1024, description="questions waiting, all clients together")
    max_streams: int = Field(16, ge=1, le=4096, description="streams at once")
    max_active: int = Field(4, ge=1, le=256, description="answers generated at once (--max-answers)")
    ended_ttl_s: float = Field(300.0, ge=0, le=7 * 86400, description="seconds an ended stream stays listed")
    max_connections: int = Field(256, ge=1, le=100_000, description="websocket connections at once")
    max_connections_per_address: int = Field(16, ge=1, le=100_000, description="... from one client address")
    allow_files: list[str] = Field(default_factory=list, description="directories add_stream may read files from")
    data_dir: str | None = Field(None, description="where the archive lives (SQLite); None: no archive")
    retain_s: float | None = Field(24 * 3600.0, gt=0, description="seconds of video and conversations kept")
    retain_bytes: ByteSize | None = Field(None, gt=0, description="archive bytes kept per stream, e.g. 2GB")
    timezone: str | None = Field(None, description="IANA time zone for clock times; None: the machine's")
    recall_tokens: int | None = Field(
        None, ge=0, le=65536, description="visual tokens of archived clips a question may recall"
    )
    allow_hosts: list[str] = Field(
        default_factory=list, description="camera hosts and networks add_stream may connect to"
    )
    metrics_public: bool = Field(False, description="serve /metrics without a token")
    ray: str | None = Field(
        None,
        min_length=1,
        description="run the engine as shards on Ray: local (a new Ray instance on this machine), auto (the "
        "cluster this machine joined with `ray start`), or that cluster's head address host:port; None: one "
        "process, no Ray",
    )
    shards: int | None = Field(
        None, ge=1, le=1024, description="engine shards with --ray; None: one per GPU of the cluster, else 1"
    )
    webhooks: list[str] = Field(default_factory=list, description="URLs every alert is POSTed to (JSON)")
    watches: list[WatchSpec] = Field(default_factory=list, description="watches from the configuration file")
    captions: dict[str, float] = Field(default_factory=dict, description="seconds between captions, per stream")

    @field_validator("webhooks")
    @classmethod
    def _webhooks(cls, value: list[str]) -> list[str]:
        from web.protocol import check_webhook

        return [check_webhook(u) for u in value]

    @field_validator("sources", mode="before")
    @classmethod
    def _parse_sources(cls, value: object) -> object:
        if isinstance(value, list):
            return [parse_source(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("viewers")
    @classmethod
    def _distinct_tokens(cls, value: list[Viewer]) -> list[Viewer]:
        tokens = [v.token for v in value]
        if len(set(tokens)) != len(tokens):
            raise ValueError("two viewers share a token")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    def zone(self) -> tzinfo:
        """The configured time zone, or the machine's."""
        if self.timezone is not None:
            return ZoneInfo(self.timezone)
        return datetime.now().astimezone().tzinfo or timezone.utc

    @model_validator(mode="after")
    def _shards_need_ray(self) -> ServeConfig:
        if self.shards is not None and self.ray is None:
            raise ValueError("--shards needs --ray")
        if self.ray is not None and (self.watches or self.captions or self.webhooks):
            raise ValueError("watches, captions and webhooks are not available with --ray yet")
        return self

    @model_validator(mode="after")
    def _admin_token_is_not_a_viewers(self) -> ServeConfig:
        if any(v.token == self.token for v in self.viewers):
            raise ValueError("a viewer's token is the admin token")
        return self

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceSpec]) -> list[SourceSpec]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stream names must be unique; repeated: {', '.join(dupes)} (use NAME=URL)")
        return value


def load_serve_config(values: dict[str, object]) -> ServeConfig:
    """Validate ``values``; every problem becomes one :class:`ConfigError` listing all of them."""
    try:
        return ServeConfig.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
