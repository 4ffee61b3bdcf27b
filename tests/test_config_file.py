"""``livesight serve --config FILE.toml``: the configuration file, validated at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.engine import Engine, EngineSettings
from errors import ConfigError
from livesight.cli import main
from livesight.config_file import load_streams_file
from models.families.smolvlm import SmolVLMAdapter
from stream.factory import make_source
from stream.source import ThreadedSource
from stream.spec import SourceSpec

GOOD = """
[[streams]]
name = "door"
url = "rtsp://admin:hunter2@10.0.0.5:554/stream1"
fps = 2

[[streams]]
name = "demo"
url = "demo"
"""

BAD = """
colour = "red"

[[streams]]
name = "door"
url = "rtsp://admin:hunter2@10.0.0.5/a"
fps = 0

[[streams]]
name = "yard"
url = "rtsp://admin:hunter2@10.0.0.6/a"
lens = "wide"

[[streams]]
name = "bad name!"
url = "ftp://example.com/x"

[[streams]]
name = "porch"
url = "rtsp://admin:hunter2@10.0.0.7/a"

[[streams]]
name = "porch"
url = "rtsp://admin:hunter2@10.0.0.8/a"

[[streams]]
url = "demo"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "streams.toml"
    path.write_text(text)
    return str(path)


def test_a_good_file_gives_specs_with_per_stream_rates(tmp_path: Path) -> None:
    specs = load_streams_file(write(tmp_path, GOOD))
    assert [(s.name, s.kind, s.fps) for s in specs] == [("door", "rtsp", 2.0), ("demo", "demo", None)]
    assert specs[0].url == "rtsp://admin:hunter2@10.0.0.5:554/stream1"


def test_every_problem_is_listed_with_its_entry_and_no_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_streams_file(write(tmp_path, BAD))
    message = err.value.message
    expected = [
        "colour: Extra inputs are not permitted",
        "streams[0] ('door'): fps: Input should be greater than 0",
        "streams[1] ('yard'): lens: Extra inputs are not permitted",
        "streams[2] ('bad name!'): name: invalid stream name",
        "streams[2] ('bad name!'): url: source 'ftp://example.com/x': unsupported scheme 'ftp'",
        "streams[4] ('porch'): the name is already used by streams[3]",
        "streams[5]: name: Field required",
    ]
    for line in expected:
        assert line in message
    assert "7 problem(s)" in message
    assert "hunter2" not in message
    assert "admin" not in message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[streams]\n", "is not valid TOML"),
        ("", "lists no [[streams]], [[viewers]] or [[watches]]"),
        ("streams = []", "lists no [[streams]], [[viewers]] or [[watches]]"),
        ("streams = ['demo']", "streams[0]: Input should be a valid dictionary"),
    ],
)
def test_broken_files_are_refused(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_streams_file(write(tmp_path, text))


def test_serve_refuses_a_bad_file_at_startup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["serve", "--config", write(tmp_path, BAD), "--token", "t" * 12, "--model", "tiny-random"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "streams[0] ('door'): fps" in err
    assert "streams[5]: name: Field required" in err
    assert "hunter2" not in err


def test_serve_refuses_a_name_used_in_the_file_and_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--config", write(tmp_path, GOOD), "--source", "demo", "--token", "t" * 12]
    assert main([*argv, "--model", "tiny-random"]) == 2
    assert "repeated: demo" in capsys.readouterr().err


async def test_the_engine_samples_each_stream_at_its_own_rate(tiny: SmolVLMAdapter) -> None:
    engine = Engine(tiny, EngineSettings(fps=1.0), make_source)
    await engine.start([SourceSpec("fast", "demo", "demo", fps=4.0), SourceSpec("slow", "demo", "demo")])
    try:
        rates = {s.name: s.fps for s in engine.streams_info()}
        assert rates == {"fast": 4.0, "slow": 1.0}
        periods = {}
        for name in rates:
            source = engine._streams[name].source
            assert isinstance(source, ThreadedSource)
            periods[name] = source._sampler.period
        assert periods == {"fast": 0.25, "slow": 1.0}
    finally:
        await engine.close()
