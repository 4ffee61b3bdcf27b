"""The page at ``/`` in a real headless Chromium: opening it on a running server, connecting and asking
through it, screenshots that are checked and kept where the test output says, and a scripted model for
answers a test must control (their text, or how long they take)."""

from __future__ import annotations

import json
import re
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from memory.segment import Segment
from models.adapter import Prefix, Turn
from tests.support.chromium import Chromium
from tests.support.server import TOKEN

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots go under here (gitignored), one folder per test; tests/conftest.py lists them at the end.
ARTIFACTS = ROOT / "test-artifacts" / "page"
SAVED: list[Path] = []

#: True when the document does not scroll sideways.
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= innerWidth"

#: Every control on the page that is laid out where the user can see it, scrolled into view, must lie
#: inside the window, be big enough to hit, and be the element a click at its centre lands on: the
#: problems found (an empty list: none).
CONTROL_PROBLEMS = """(() => {
  const problems = [];
  for (const el of document.querySelectorAll('input, select, button')) {
    if (el.closest('[hidden]')) continue;
    el.scrollIntoView({block: 'center', inline: 'nearest'});
    const r = el.getBoundingClientRect(), name = el.id || el.textContent;
    if (r.width < 24 || r.height < 16) problems.push(`${name}: too small (${r.width}x${r.height})`);
    if (r.left < 0 || r.right > innerWidth) problems.push(`${name}: outside the window (${r.left}..${r.right})`);
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    const over = hit && (hit.id || hit.tagName);
    if (!hit || !(hit === el || el.contains(hit))) problems.push(`${name}: covered by ${over}`);
  }
  window.scrollTo(0, 0);
  return problems;
})()"""


def js(value: object) -> str:
    """``value`` as a JavaScript literal."""
    return json.dumps(value)


@asynccontextmanager
async def open_page(port: int, profile: Path, width: int = 1280, height: int = 800) -> AsyncIterator[Chromium]:
    """The page of the server on ``port``, loaded, in a ``width`` x ``height`` viewport."""
    async with Chromium(f"http://127.0.0.1:{port}/", profile) as page:
        await page.wait_for(
            f"location.port === '{port}' && document.readyState === 'complete' && typeof $ === 'function'",
            30,
            "the page",
        )
        await page.viewport(width, height)
        yield page


async def connect(page: Chromium, token: str = TOKEN) -> None:
    await page.evaluate(f"$('token').value = {js(token)}; $('connect').click()")
    await page.wait_for("$('status').textContent === 'connected'", 15, "the websocket")


async def submit(page: Chromium, question: str) -> str:
    """Ask ``question`` through the page's form; returns the id the page gave it."""
    qid = "p" + str(await page.evaluate("nextId"))
    await page.evaluate(f"$('question').value = {js(question)}; $('ask').requestSubmit()")
    await page.wait_for(f"$('answer-{qid}') !== null", 5, f"question {qid} on the page")
    return qid


async def ask(page: Chromium, question: str, timeout: float = 60) -> str:
    """Ask ``question`` and wait for its whole answer on the page; returns the answer's text."""
    qid = await submit(page, question)
    await page.wait_for(f"$('answer-{qid}').dataset.done === '1'", timeout, f"the answer to {qid}")
    return str(await page.evaluate(f"$('answer-{qid}').textContent"))


class Shots:
    """Numbered screenshots of a test's states in ``folder``; each is checked to be a well-formed PNG of
    the whole viewport."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    async def take(self, page: Chromium, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        size = png_size(await page.screenshot(path))
        assert size == tuple(await page.evaluate("[innerWidth, innerHeight]")), (path, size)
        self.taken.append(path)
        return path


def shots_folder(test_name: str) -> Path:
    """A fresh folder for one test's screenshots."""
    folder = ARTIFACTS / re.sub(r"[^\w.-]+", "_", test_name)
    for old in folder.glob("*.png"):
        old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    SAVED.append(folder)
    return folder


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a well-formed, non-blank PNG: the signature, every chunk's CRC, IHDR first and
    IEND last, and image data that inflates to exactly the rows IHDR promises, not all one value."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks: list[tuple[bytes, bytes]] = []
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        at += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", [k for k, _ in chunks]
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert width > 0 and height > 0 and interlace == 0
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    row = 1 + (width * _CHANNELS[colour] * depth + 7) // 8  # a filter byte, then the samples
    assert len(pixels) == row * height, "image data does not match its header"
    assert len(set(pixels)) > 2, "a blank image"
    return width, height


class ScriptedModel:
    """Stands in for the model's words only (frames, memory, prefill, the engine and the wire stay real):
    every answer is ``text``, sent in ``pieces`` pieces. A question containing :attr:`HOLD` is held after
    its first piece until it is cancelled (a dropped connection cancels its questions), :meth:`release`d,
    or ``hold_s`` passes. Install with ``monkeypatch.setattr(adapter, "generate", model.generate)`` and
    ``monkeypatch.setattr(adapter, "decode", None)`` (so the engine answers through ``generate``)."""

    HOLD = "[hold]"

    def __init__(self, text: str = "a scripted answer", pieces: int = 1, hold_s: float = 60.0) -> None:
        self.text = text
        self.pieces = pieces
        self.hold_s = hold_s
        self.held = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def generate(
        self,
        prefix: Prefix,
        turns: Sequence[Turn],
        question: str,
        max_new_tokens: int,
        cancel: threading.Event,
        *,
        recalled: Sequence[Segment] = (),
        detail: np.ndarray | None = None,
    ) -> Iterator[str]:
        size = -(-len(self.text) // self.pieces)
        parts = [self.text[i : i + size] for i in range(0, len(self.text), size)]
        yield parts[0]
        if self.HOLD in question:
            self.held.set()
            deadline = time.monotonic() + self.hold_s
            while not (cancel.is_set() or self._released.is_set()) and time.monotonic() < deadline:
                cancel.wait(0.05)
        for part in parts[1:]:
            if cancel.is_set():
                return
            yield part
