"""stream/spec.py: source specs, names, and credential redaction."""

from __future__ import annotations

import pytest

from errors import ConfigError
from stream.spec import parse_source, redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://cam.local/live?user=bob&password=hunter2", "rtsp://cam.local/live?user=***&password=***"),
        ("https://h/x?token=abc&sig=def&q=1", "https://h/x?token=***&sig=***&q=1"),
        ("/videos/a.mp4", "/videos/a.mp4"),
        ("demo", "demo"),
    ],
)
def test_redact_removes_credentials(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "hunter2" not in redact(url)


def test_parse_source_names_and_kinds(tmp_path: object) -> None:
    assert parse_source("demo").name == "demo"
    assert parse_source("lobby=demo").name == "lobby"
    with pytest.raises(ConfigError, match="no such file"):
        parse_source("cam=/does/not/exist.mp4")
    with pytest.raises(ConfigError, match="invalid stream name"):
        parse_source("bad name=demo")
    with pytest.raises(ConfigError, match="unsupported scheme") as err:
        parse_source("x=gopher://u:secret@h/")
    assert "secret" not in str(err.value)
