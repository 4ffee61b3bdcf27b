"""What crosses between the gateway and a shard, besides the engine's own events and errors: frozen,
picklable values (Ray pickles them)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from engine.answering import GuidedMode
from engine.events import StreamInfo, StreamStatus
from engine.recall import RecallRequest
from models.adapter import Turn


@dataclass(frozen=True, slots=True)
class Asked:
    """A question as a shard receives it: :class:`~engine.engine.Question` without what stays at the
    gateway (its reply, its cancel flag, the connection that owns it)."""

    ticket: str  # unique per question at the gateway (question ids are unique per connection only)
    id: str
    stream: str
    text: str
    max_new_tokens: int
    session: str | None
    received: float
    owner: Hashable  # a picklable stand-in for the owner: fairness is per owner on the shard too
    guided: GuidedMode | None
    recall: RecallRequest
    detail: bool
    turns: tuple[Turn, ...] | None


@dataclass(frozen=True, slots=True)
class Report:
    """What a shard tells the gateway, at once on a stream's state change and every ``report_s`` seconds."""

    changes: tuple[StreamStatus, ...]  # state changes and removals since the last report, oldest first
    infos: tuple[StreamInfo, ...]  # every stream of the shard now
    queued: int  # questions waiting
    lags: tuple[tuple[str, float], ...]  # (stream, seconds from capture to memory) of frames ingested since


@dataclass(frozen=True, slots=True)
class Hello:
    """A shard that opened: who it is and what it serves."""

    shard: int
    pid: int
    node: str  # the host it runs on
    model_id: str
    tokens_per_frame: int
    budget: int
    streams: tuple[str, ...]  # the streams it runs
    refused: tuple[tuple[str, str], ...] = ()  # streams it was given and could not start: (name, why)
