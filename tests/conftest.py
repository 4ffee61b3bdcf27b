"""Shared fixtures. The server harness is in tests/support/server.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.engine import EngineSettings
from models.families.smolvlm import SmolVLMAdapter
from models.loader import choose_placement, load_model
from tests.support.page import SAVED, ScriptedModel, Shots, shots_folder
from tests.support.server import Server, running_server


@pytest.fixture(scope="session")
def tiny() -> SmolVLMAdapter:
    """The built-in tiny SmolVLM2 with random weights (real transformers classes, built in code)."""
    adapter = load_model("tiny-random", choose_placement("cpu"))
    assert isinstance(adapter, SmolVLMAdapter)
    return adapter


@pytest.fixture
async def srv(tiny: SmolVLMAdapter, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """A running server with the tiny model; a module or test sets it up with
    ``@pytest.mark.server(sources=[...], fps=..., policy=SourcePolicy(...))`` (default: no sources, 2 fps,
    add_stream allowed the demo only)."""
    marker = request.node.get_closest_marker("server")
    options = marker.kwargs if marker else {}
    settings = EngineSettings(fps=options.get("fps", 2.0))
    async with running_server(tiny, settings, options.get("sources", ()), policy=options.get("policy")) as server:
        yield server


@pytest.fixture
def scripted(tiny: SmolVLMAdapter, monkeypatch: pytest.MonkeyPatch) -> ScriptedModel:
    """The tiny model answering with :class:`ScriptedModel`'s words (frames, memory and prefill stay real)."""
    model = ScriptedModel()
    monkeypatch.setattr(tiny, "generate", model.generate)
    monkeypatch.setattr(tiny, "decode", None)  # not SupportsSteps: answered through generate, piece by piece
    return model


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    """Screenshots of the page's checked states, kept in test-artifacts/page/<test>/ (listed at the end of
    the run, and printed with the test's output)."""
    folder = shots_folder(request.node.name)
    print(f"page screenshots: {folder}")
    return Shots(folder)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for folder in dict.fromkeys(SAVED):
        if any(folder.glob("*.png")):
            terminalreporter.write_line(f"page screenshots: {folder}")


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """``livesight serve`` keeps an archive under $XDG_DATA_HOME by default: each test gets its own, so no
    test sees another's (or the user's) memories and conversations."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
