"""Watches from the configuration file: validated with every problem named, and reconciled with the
stored ones at every start (by stream and condition: changed settings updated in place, new ones added,
ones no longer listed removed; watches added at run time left alone)."""

from __future__ import annotations

import asyncio
from datetime import timezone
from pathlib import Path

import pytest

from engine.events import StreamEvent
from engine.observer import NoObserver
from engine.schedule import Background
from engine.watches import WatchSpec
from engine.watching import Watching
from errors import ConfigError
from livesight.config_file import parse_config
from store.events import EventStore

GOOD = {
    "streams": [{"name": "door", "url": "demo", "caption_every_s": 60}],
    "watches": [
        {"stream": "door", "condition": "a person is at the door", "describe": True, "webhook": "https://h/x"},
        {"stream": "door", "condition": "the lights are off", "every_s": 2, "min_duration_s": 4, "cooldown_s": 0},
    ],
    "webhooks": ["http://127.0.0.1:9000/all"],
}


def test_a_good_file_gives_watches_captions_and_webhooks() -> None:
    cfg = parse_config(GOOD)
    assert [w.condition for w in cfg.watches] == ["a person is at the door", "the lights are off"]
    assert cfg.watches[1] == WatchSpec("door", "the lights are off", 2.0, 4.0, 0.0, origin="config")
    assert cfg.watches[0].describe and cfg.watches[0].webhook == "https://h/x"
    assert cfg.captions == {"door": 60} and cfg.webhooks == ["http://127.0.0.1:9000/all"]


def test_every_watch_problem_is_listed_with_its_entry() -> None:
    bad = {
        "watches": [
            {"stream": "door", "condition": "x" * 301},
            {"stream": "no spaces allowed", "condition": "a dog", "every_s": 0.1},
            {"stream": "door", "condition": "a dog", "webhook": "ftp://h/x", "colour": "red"},
            {"stream": "door", "condition": "a cat"},
            {"stream": "door", "condition": "a cat"},
        ],
        "webhooks": ["not a url"],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(bad)
    text = str(err.value)
    for expected in (
        "watches[0] ('door'): condition",
        "watches[1] ('no spaces allowed'): every_s",
        "watches[2] ('door'): colour",
        "watches[4] ('door'): the same condition is already watched by watches[3]",
        "webhooks[0]",
    ):
        assert expected in text, text


async def test_configuration_watches_are_reconciled_with_the_stored_ones(tmp_path: Path) -> None:
    async def load(config: list[WatchSpec]) -> Watching:
        store = EventStore(tmp_path)
        store.start()
        heard: list[StreamEvent] = []
        w = Watching(
            background=Background(),
            publish=heard.append,
            observer=NoObserver(),
            store=store,
            clock=lambda: 0.0,
            timezone=timezone.utc,
        )
        await w.load(config)
        await asyncio.to_thread(store.close)
        return w

    a = WatchSpec("door", "a person is at the door", origin="config")
    b = WatchSpec("door", "the lights are off", origin="config")
    first = await load([a, b])
    ids = {i.condition: i.id for i in first.infos()}
    store = EventStore(tmp_path)
    store.start()
    runtime = Watching(
        background=Background(),
        publish=lambda ev: None,
        observer=NoObserver(),
        store=store,
        clock=lambda: 0.0,
        timezone=timezone.utc,
    )
    await runtime.load([a, b])
    added = await runtime.add(WatchSpec("door", "a dog is in the garden"))  # at run time
    await asyncio.to_thread(store.close)

    changed = WatchSpec("door", "a person is at the door", every_s=1.0, origin="config")
    c = WatchSpec("door", "a parcel is on the step", origin="config")
    second = await load([changed, c])
    got = {i.condition: i for i in second.infos()}
    assert set(got) == {"a person is at the door", "a parcel is on the step", "a dog is in the garden"}
    assert got["a person is at the door"].id == ids["a person is at the door"]  # updated in place
    assert got["a person is at the door"].every_s == 1.0
    assert got["a dog is in the garden"].id == added.id and got["a dog is in the garden"].origin == "api"
