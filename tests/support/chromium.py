"""A real headless Chromium (Debian's), driven over the Chrome DevTools Protocol on its own websocket."""

from __future__ import annotations

import asyncio
import base64
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

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools protocol command on the page; its result (events in between are dropped: none is
        enabled)."""
        assert self._cdp is not None
        msg_id = next(self._ids)
        await self._cdp.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await asyncio.wait_for(self._cdp.recv(), 30))
            if reply.get("id") == msg_id:
                break
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def viewport(self, width: int, height: int) -> None:
        """Lay the page out as a ``width`` x ``height`` CSS-pixel window (a desktop one: no mobile zoom)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        await self.call("Emulation.setDeviceMetricsOverride", **metrics)
        await self.wait_for(f"innerWidth === {width} && innerHeight === {height}", 10, f"a {width}x{height} viewport")

    async def screenshot(self, path: Path) -> bytes:
        """Save what the viewport shows as a PNG at ``path``; returns its bytes."""
        png = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        await asyncio.to_thread(_write, path, png)
        return png

    async def click(self, element: str) -> None:
        """A real left click (mouse events, as a user's) at the centre of ``element``, a JavaScript expression
        for an element, scrolled into view first."""
        x, y = await self.evaluate(
            f"(() => {{ const el = {element}; el.scrollIntoView({{block: 'center', inline: 'center'}});"
            " const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element."""
        await self.call("Input.insertText", text=text)

    async def press_enter(self) -> None:
        """The Enter key, down and up, on the focused element."""
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        await self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **key)

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


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())
