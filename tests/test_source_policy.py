"""Allow-lists for sources added at run time: files inside allowed directories only (symlinks resolved),
cameras on allowed hosts and networks only (checked on resolved addresses, again at every connection),
with errors that tell nothing about what exists or listens."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from errors import ConfigError
from stream.factory import make_source
from stream.frame import Frame
from stream.policy import SourceForbidden, SourcePolicy
from stream.rtsp import RtspSource
from stream.source import Source, SourceState
from stream.spec import SourceSpec, parse_source
from tests.media import write_video
from tests.support.rtsp import RtspServer, free_port
from tests.support.rtsp_probe import RtspProbe


def no_dns(host: str) -> list[str]:
    raise AssertionError(f"{host!r} should not have been resolved")


def refusal(policy: SourcePolicy, text: str) -> str:
    with pytest.raises(SourceForbidden) as err:
        policy.parse(text)
    return str(err.value)


async def first_frame(source: Source) -> Frame:
    return await anext(aiter(source))


# --- files -----------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """videos/clip.mp4 (allowed), videos-evil/clip.mp4 and secret/clip.mp4 (not), and symlinks."""
    for d in ("videos", "videos-evil", "secret"):
        (tmp_path / d).mkdir()
        write_video(tmp_path / d / "clip.mp4", 0.5)
    (tmp_path / "videos" / "escape.mp4").symlink_to(tmp_path / "secret" / "clip.mp4")
    (tmp_path / "videos" / "sub").symlink_to(tmp_path / "secret")
    (tmp_path / "link-in.mp4").symlink_to(tmp_path / "videos" / "clip.mp4")
    return tmp_path


def test_files_inside_an_allowed_directory_are_opened_by_their_real_path(tree: Path) -> None:
    policy = SourcePolicy(allow_files=[str(tree / "videos")])
    spec = policy.parse(f"clip={tree}/videos/clip.mp4")
    assert (spec.name, spec.kind, spec.url) == ("clip", "file", str(tree / "videos" / "clip.mp4"))
    # A link from elsewhere to an allowed file is that file.
    assert policy.parse(f"a={tree}/link-in.mp4").url == str(tree / "videos" / "clip.mp4")
    assert policy.parse(f"b=file://{tree}/videos/clip.mp4").kind == "file"


@pytest.mark.parametrize(
    "rel",
    [
        "secret/clip.mp4",  # outside
        "videos-evil/clip.mp4",  # a sibling sharing the allowed directory's name as a prefix
        "videos/../secret/clip.mp4",  # climbing out
        "videos/escape.mp4",  # a symlink inside pointing outside
        "videos/sub/clip.mp4",  # a directory symlink pointing outside
        "videos/missing.mp4",  # does not exist: the same answer
        "videos",  # a directory
        "/dev/zero",  # not a regular file
    ],
)
def test_everything_else_gets_one_answer(tree: Path, rel: str) -> None:
    policy = SourcePolicy(allow_files=[str(tree / "videos")])
    path = rel if rel.startswith("/") else f"{tree}/{rel}"
    message = refusal(policy, f"clip={path}")
    # The same words whether the file exists or not: only the path the client sent differs.
    assert message.replace(path, "P") == refusal(policy, f"clip={tree}/videos/missing.mp4").replace(
        f"{tree}/videos/missing.mp4", "P"
    )
    assert "--allow-files" in message
    assert str(tree / "secret") not in message.replace(path, "")  # a symlink's target is never shown


def test_no_allowed_directories_means_no_files(tree: Path) -> None:
    assert "--allow-files" in refusal(SourcePolicy(), f"clip={tree}/videos/clip.mp4")
    assert SourcePolicy().parse("demo").kind == "demo"


async def test_an_allowed_file_plays(tree: Path) -> None:
    spec = SourcePolicy(allow_files=[str(tree / "videos")]).parse(f"clip={tree}/videos/clip.mp4")
    source = make_source(spec, 2.0, lossless=True)
    frame = await asyncio.wait_for(first_frame(source), 20)
    assert frame.stream == "clip"
    await source.close()


def test_bad_entries_are_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        SourcePolicy(allow_files=[str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="--allow-hosts"):
        SourcePolicy(allow_hosts=["not a host!"])
    with pytest.raises(ConfigError, match="--allow-hosts"):
        SourcePolicy(allow_hosts=["10.0.0.0/33"])


# --- hosts -----------------------------------------------------------------------------------------


def test_addresses_and_networks() -> None:
    policy = SourcePolicy(allow_hosts=["10.0.0.0/8", "fd00::/8", "192.168.1.20"], resolve=no_dns)
    assert policy.parse("a=rtsp://u:p@10.1.2.3:554/x").kind == "rtsp"
    assert policy.parse("b=rtsp://[fd00::5]/x").kind == "rtsp"
    assert policy.parse("c=rtsp://192.168.1.20/x").kind == "rtsp"
    for url in ("rtsp://192.168.1.21/x", "rtsp://127.0.0.1/x", "rtsp://[::1]/x", "rtsp://[::ffff:127.0.0.1]/x"):
        assert "--allow-hosts" in refusal(policy, f"cam={url}")
    assert policy.allow_hosts == ("10.0.0.0/8", "fd00::/8", "192.168.1.20/32")


def test_a_name_listed_by_name_is_trusted_without_resolving_it() -> None:
    policy = SourcePolicy(allow_hosts=["Cam.Local."], resolve=no_dns)
    spec = policy.parse("door=rtsp://u:p@cam.local:8554/s")
    assert spec.guard is not None
    assert spec.guard(spec.url) == spec.url  # connects by name


def test_other_names_are_judged_by_every_address_they_resolve_to() -> None:
    answers = {"good.example": ["10.0.0.7"], "evil.example": ["127.0.0.1"], "mixed.example": ["10.0.0.7", "::1"]}
    policy = SourcePolicy(allow_hosts=["10.0.0.0/8"], resolve=lambda h: answers.get(h, []))
    spec = policy.parse("cam=rtsp://u:p@good.example:554/s?token=t")
    assert spec.guard is not None
    assert spec.guard(spec.url) == "rtsp://u:p@10.0.0.7:554/s?token=t"  # pinned to the checked address
    assert spec.display_url == "rtsp://***@good.example:554/s?token=***"
    evil = refusal(policy, "cam=rtsp://evil.example/s")
    unknown = refusal(policy, "cam=rtsp://nowhere.example/s")
    assert evil.replace("evil", "X") == unknown.replace("nowhere", "X")  # not resolving says nothing more
    assert "--allow-hosts" in refusal(policy, "cam=rtsp://mixed.example/s")


def test_odd_spellings_of_an_address_are_resolved_not_trusted() -> None:
    """getaddrinfo reads "127.1" and "2130706433" as 127.0.0.1: they are checked as what they resolve to."""
    only_lan = SourcePolicy(allow_hosts=["10.0.0.0/8"])
    for host in ("127.1", "2130706433"):
        assert "--allow-hosts" in refusal(only_lan, f"cam=rtsp://{host}/x")
    loopback = SourcePolicy(allow_hosts=["127.0.0.0/8"])
    spec = loopback.parse("cam=rtsp://127.1:8554/x")
    assert spec.guard is not None and spec.guard(spec.url) == "rtsp://127.0.0.1:8554/x"


@pytest.fixture
def probe() -> Iterator[RtspProbe]:
    with RtspProbe() as p:
        yield p


def test_a_forbidden_host_is_never_contacted_and_open_ports_look_like_closed_ones(probe: RtspProbe) -> None:
    policy = SourcePolicy(allow_hosts=["10.0.0.0/8"])
    listening = refusal(policy, f"cam=rtsp://127.0.0.1:{probe.port}/x")
    closed = refusal(policy, f"cam=rtsp://127.0.0.1:{free_port()}/x")
    assert listening == closed
    assert probe.take() == []


async def test_dns_rebinding_is_caught_at_connection_time(probe: RtspProbe) -> None:
    """A name that resolves to an allowed address when added and to a forbidden one later: the reader
    checks again before connecting and never reaches the forbidden address."""
    answers = iter([["10.0.0.7"], ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]])
    policy = SourcePolicy(allow_hosts=["10.0.0.0/8"], resolve=lambda host: next(answers, ["127.0.0.1"]))
    spec = policy.parse(f"cam=rtsp://rebind.example:{probe.port}/x")
    source = make_source(spec, 1.0)
    assert isinstance(source, RtspSource)
    task = asyncio.create_task(first_frame(source), name="test-consumer")
    deadline = time.monotonic() + 10
    while source.stats.error is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert "not allowed" in source.stats.error
    assert source.stats.state in (SourceState.RECONNECTING, SourceState.OFFLINE)
    await source.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert probe.take() == []


async def test_a_camera_allowed_by_address_streams_through_the_pinned_address() -> None:
    """A name FFmpeg itself could not resolve goes live: the reader connects to the address it checked."""
    server = RtspServer()
    await asyncio.to_thread(server.start)
    try:
        policy = SourcePolicy(allow_hosts=["127.0.0.0/8"], resolve=lambda host: ["127.0.0.1"])
        spec = policy.parse(f"cam=rtsp://camera.invalid:{server.port}/cam")
        source = make_source(spec, 2.0)
        frame = await asyncio.wait_for(first_frame(source), 20)
        assert frame.stream == "cam"
        assert source.display_url == f"rtsp://camera.invalid:{server.port}/cam"
        await source.close()
    finally:
        server.close()


def test_other_kinds_are_not_added_through_the_policy() -> None:
    with pytest.raises(SourceForbidden):
        SourcePolicy(allow_hosts=["0.0.0.0/0"]).check(SourceSpec("cam", "webrtc", "webrtc"))


def test_trusted_sources_still_check_files_exist() -> None:
    # parse_source without a policy (the command line, the streams file) still names a missing file.
    with pytest.raises(ConfigError, match="no such file"):
        parse_source(f"clip={os.sep}no{os.sep}such.mp4")
