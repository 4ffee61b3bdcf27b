"""Authentication and roles on a real server: failed attempts throttled and logged per address, Host checked,
/healthz only tells liveness without a token, viewer tokens limited to their streams on every message and
endpoint, the admin token from a file or the environment."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from tests.support.server import TOKEN, client, http_request, running_server, wait_for_frames
from web.auth import Authenticator, FailureLimiter, TooManyFailures, Viewer

VIEWER = Viewer("lobby", "viewer-token-456", frozenset({"lobby"}))


def test_the_limiter_locks_an_address_out_after_repeated_failures_and_lets_it_back() -> None:
    now = [0.0]
    auth = Authenticator(TOKEN, [VIEWER], FailureLimiter(max_failures=3, window_s=60, clock=lambda: now[0]))
    for _ in range(3):
        with pytest.raises(Exception, match="wrong token"):
            auth.authenticate("guess", "10.0.0.9")
    with pytest.raises(TooManyFailures, match="try again in 60 s") as info:
        auth.authenticate(TOKEN, "10.0.0.9")  # even the right token, while locked out
    assert info.value.retryable
    assert auth.authenticate(TOKEN, "10.0.0.10").admin  # other addresses are not affected
    now[0] = 61.0
    assert auth.authenticate(TOKEN, "10.0.0.9").admin
    assert auth.authenticate("viewer-token-456", "10.0.0.9").streams == frozenset({"lobby"})


def test_the_limiter_tracks_a_bounded_number_of_addresses() -> None:
    limiter = FailureLimiter(max_failures=2, max_addresses=100)
    for i in range(10_000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}", "wrong token")
    assert len(limiter._failures) == 100 and limiter.total == 10_000


async def test_guessing_over_the_websocket_is_throttled_and_logged(
    tiny: SmolVLMAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "livesight.auth")
    async with running_server(tiny, EngineSettings(fps=2.0), ()) as srv:
        codes = []
        for i in range(12):
            async with connect(srv.url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": f"guess-{i}"}))
                err = json.loads(await asyncio.wait_for(ws.recv(), 10))
                codes.append((err["code"], err["retryable"]))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
        # The first ten are plain failures; after them the address is locked out, retryable later.
        assert codes[:10] == [("unauthorized", False)] * 10
        assert codes[10:] == [("unauthorized", True)] * 2
        lines = [r.getMessage() for r in caplog.records if "authentication failed from 127.0.0.1" in r.getMessage()]
        assert len(lines) == 1  # logged, once per window, with the address
        # The right token is refused too while locked out: guessing cannot continue from this address.
        with pytest.raises(AssertionError):
            async with client(srv.url):
                pass


async def test_host_must_name_the_server(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=2.0), ()) as srv:
        for host, status in [("127.0.0.1", 200), ("localhost", 200), ("[::1]", 200), ("evil.example", 421)]:
            res = await asyncio.to_thread(http_request, srv.port, "GET", "/healthz", None, {"Host": f"{host}:1"})
            assert res.status == status, host
        # DNS rebinding: a hostile page served from a name resolving here sends a matching Origin and Host.
        upgrade = {
            "Host": f"evil.example:{srv.port}",
            "Origin": f"http://evil.example:{srv.port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        res = await asyncio.to_thread(http_request, srv.port, "GET", "/v1/ws", None, upgrade)
        assert res.status == 421
        upgrade["Host"] = upgrade["Origin"] = f"127.0.0.1:{srv.port}"
        upgrade["Origin"] = "http://" + upgrade["Origin"]
        res = await asyncio.to_thread(http_request, srv.port, "GET", "/v1/ws", None, upgrade)
        assert res.status == 101  # the same request naming this server is upgraded
        res = await asyncio.to_thread(
            http_request, srv.port, "POST", "/v1/whip/cam", b"v=0", {"Host": "evil.example", "Authorization": "x"}
        )
        assert res.status == 421


async def test_healthz_tells_liveness_only_without_a_token(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=2.0), ("demo", "lobby=demo"), viewers=[VIEWER]) as srv:
        await wait_for_frames(srv.engine, "demo", 1)
        anyone = await asyncio.to_thread(http_request, srv.port, "GET", "/healthz")
        assert anyone.status == 200 and json.loads(anyone.body) == {"status": "ok"}
        admin = await asyncio.to_thread(
            http_request, srv.port, "GET", "/healthz", None, {"Authorization": f"Bearer {TOKEN}"}
        )
        details = json.loads(admin.body)
        assert details["model"] == "tiny-random" and {s["name"] for s in details["streams"]} == {"demo", "lobby"}
        viewer = await asyncio.to_thread(
            http_request, srv.port, "GET", "/healthz", None, {"Authorization": f"Bearer {VIEWER.token}"}
        )
        assert [s["name"] for s in json.loads(viewer.body)["streams"]] == ["lobby"]
        wrong = await asyncio.to_thread(
            http_request, srv.port, "GET", "/healthz", None, {"Authorization": "Bearer nope-nope"}
        )
        assert wrong.status == 401


async def test_a_viewer_sees_and_asks_about_its_streams_only(tiny: SmolVLMAdapter) -> None:
    async with running_server(tiny, EngineSettings(fps=4.0), ("demo", "lobby=demo"), viewers=[VIEWER]) as srv:
        await wait_for_frames(srv.engine, "lobby", 1)
        async with connect(srv.url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": VIEWER.token}))
            assert json.loads(await ws.recv()) == {"type": "ready", "streams": ["lobby"]}

            async def reply(msg: dict[str, Any]) -> dict[str, Any]:
                await ws.send(json.dumps(msg))
                while True:
                    got = dict(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                    if got["type"] != "token":
                        return got

            assert [s["name"] for s in (await reply({"type": "streams"}))["streams"]] == ["lobby"]
            ask = {"type": "ask", "id": "q", "stream": "lobby", "question": "What?", "max_new_tokens": 4}
            assert (await reply(ask))["type"] == "answer"
            hidden = await reply({**ask, "id": "h", "stream": "demo"})
            assert (hidden["code"], hidden["id"]) == ("unknown_stream", "h")  # as if it did not exist
            assert (await reply({"type": "subscribe", "stream": "demo"}))["code"] == "unknown_stream"
            assert (await reply({"type": "subscribe", "stream": "lobby"}))["type"] == "status"
            added = await reply({"type": "add_stream", "id": "a", "name": "x", "url": "demo"})
            assert (added["code"], added["retryable"]) == ("forbidden", False)
            removed = await reply({"type": "remove_stream", "id": "r", "name": "lobby"})
            assert removed["code"] == "forbidden"
        assert sorted(srv.engine.stream_names()) == ["demo", "lobby"]
        # Publishing over WHIP adds a stream: admin only.
        res = await asyncio.to_thread(
            http_request,
            srv.port,
            "POST",
            "/v1/whip/cam",
            b"v=0\r\n",
            {"Authorization": f"Bearer {VIEWER.token}", "Content-Type": "application/sdp"},
        )
        assert res.status == 403


def livesight(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livesight.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_the_admin_token_comes_from_a_file_or_the_environment_and_a_command_line_token_warns(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LIVESIGHT_TOKEN"}
    bad = ["serve", "--model", "tiny-random", "--port", "0", "--fps", "0"]  # refused after the token is read
    on_argv = livesight(*bad, "--token", "secret-on-argv", env=env)
    assert "every local user" in on_argv.stderr and "--token-file" in on_argv.stderr
    assert "secret-on-argv" not in on_argv.stderr
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-123\n")
    from_file = livesight(*bad, "--token-file", str(token_file), env=env)
    assert "warning" not in from_file.stderr and "from-a-file" not in from_file.stderr
    assert "fps" in from_file.stderr and from_file.returncode == 2
    short = tmp_path / "short"
    short.write_text("abc\n")
    res = livesight(*bad, "--token-file", str(short), env=env)
    assert res.returncode == 2 and "shorter than 8" in res.stderr and "abc" not in res.stderr
    both = livesight(*bad, "--token-file", str(token_file), "--token", "x" * 12, env=env)
    assert both.returncode == 2 and "not both" in both.stderr


def test_viewer_tokens_come_from_the_config_file(tmp_path: Path) -> None:
    from livesight.config_file import load_config_file

    (tmp_path / "lobby.token").write_text("lobby-viewer-token\n")
    config = tmp_path / "livesight.toml"
    config.write_text(
        '[[streams]]\nname = "lobby"\nurl = "demo"\n'
        f'[[viewers]]\nname = "screen"\ntoken_file = "{tmp_path / "lobby.token"}"\nstreams = ["lobby"]\n'
        '[[viewers]]\nname = "phone"\ntoken_env = "PHONE_TOKEN"\nstreams = ["lobby", "door"]\n'
        '[[viewers]]\nname = "broken"\nstreams = ["lobby"]\n'
    )
    with pytest.raises(Exception, match="broken") as info:
        load_config_file(str(config), {"PHONE_TOKEN": "phone-token-1234"})
    assert "exactly one of token_file and token_env" in str(info.value)
    config.write_text(config.read_text().rsplit("[[viewers]]", 1)[0])
    viewers = load_config_file(str(config), {"PHONE_TOKEN": "phone-token-1234"}).viewers
    assert [(v.name, v.token, sorted(v.streams)) for v in viewers] == [
        ("screen", "lobby-viewer-token", ["lobby"]),
        ("phone", "phone-token-1234", ["door", "lobby"]),
    ]
