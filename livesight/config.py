"""Configuration, validated once at the edge (unknown keys rejected) into plain typed values."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from errors import ConfigError
from models.registry import DEFAULT_MODEL
from stream.spec import SourceSpec, parse_source


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
        min_length=8, max_length=512, repr=False, description="the shared secret clients authenticate with"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    load_4bit: bool = Field(False, description="4-bit weights through bitsandbytes (CUDA, the bnb extra)")
    budget: int | None = Field(None, ge=64, le=1_000_000, description="in-context visual tokens per stream")
    lossless: bool = Field(
        False, description="read files and the demo as fast as the model ingests, losing no frame (--fast)"
    )
    max_queue: int = Field(16, ge=1, le=1024, description="questions waiting, all clients together")

    @field_validator("sources", mode="before")
    @classmethod
    def _parse_sources(cls, value: object) -> object:
        if isinstance(value, list):
            return [parse_source(v) if isinstance(v, str) else v for v in value]
        return value

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
