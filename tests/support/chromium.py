"""A real headless Chromium (Debian's), driven over the Chrome DevTools Protocol on its own websocket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--remote-debugging-port=0",
]


class Chromium:
    """``async with Chromium(url, profile_dir) as browser``: one page at ``url``; ``stderr`` keeps every
    line Chromium logged (the page's console.log lines among them)."""

    def __init__(self, url: str, profile: Path) -> None:
        self.url = url
        self.profile = profile
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._cdp: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        self.proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            self.url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stderr(listening), name="chromium-stderr")
        browser_ws = await asyncio.wait_for(listening, 30)
        port = int(re.match(r"ws://[^:]+:(\d+)/", browser_ws).group(1))  # type: ignore[union-attr]
        page_ws = await asyncio.wait_for(self._page_target(port), 30)
        self._cdp = await connect(page_ws, max_size=None)
        return self

    async def _read_stderr(self, listening: asyncio.Future[str]) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr.append(line)
            if "DevTools listening on " in line and not listening.done():
                listening.set_result(line.split("DevTools listening on ", 1)[1].strip())
        if not listening.done():
            listening.set_exception(RuntimeError("chromium exited: " + "\n".join(self.stderr[-20:])))

    async def _page_target(self, port: int) -> str:
        while True:
            body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/json/list")
            pages = [t for t in json.loads(body) if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        assert self._cdp is not None
        msg_id = next(self._ids)
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        await self._cdp.send(json.dumps({"id": msg_id, "method": "Runtime.evaluate", "params": params}))
        while True:
            reply = json.loads(await asyncio.wait_for(self._cdp.recv(), 30))
            if reply.get("id") == msg_id:
                break
        result = reply.get("result", {})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what} ({expression})")
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """Vanish without a word, as a crashed browser or a pulled cable would."""
        if self._cdp is not None:
            self._cdp.transport.abort()
            self._cdp = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def __aexit__(self, *exc: object) -> None:
        if self._cdp is not None:
            await self._cdp.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())
