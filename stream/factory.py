"""Building a source from a validated spec."""

from __future__ import annotations

from errors import ConfigError
from stream.demo import DemoSource
from stream.file import FileSource
from stream.rtsp import RtspSource
from stream.source import Source
from stream.spec import SourceSpec


def make_source(spec: SourceSpec, fps: float, *, lossless: bool = False) -> Source:
    """A new, unstarted source for ``spec`` sampling ``fps`` frames per second of stream time.

    ``lossless=True`` reads files and the demo scene as fast as the consumer takes frames, without losing
    any sampled frame (``livesight serve --fast``); cameras always keep real time. A camera gets the spec's
    transport and its guard (set by :class:`stream.policy.SourcePolicy`), which re-checks the host before
    every connection.
    """
    if spec.kind == "demo":
        return DemoSource(spec.name, fps, lossless=lossless)
    if spec.kind == "file":
        return FileSource(spec.name, spec.url, fps, lossless=lossless)
    if spec.kind == "rtsp":
        return RtspSource(spec.name, spec.url, fps, transport=spec.transport, guard=spec.guard)
    raise ConfigError(f"no source for kind {spec.kind!r}")
