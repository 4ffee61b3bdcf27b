"""``livesight serve`` with the dark double (tests/support/dark.py) as its model, for tests that need a real
server process (a kill -9): ``python -m tests.support.dark_server [serve options]``."""

from __future__ import annotations

import sys

import engine.build as build_module
from livesight.cli import main
from models.adapter import ModelAdapter
from models.families.smolvlm import SmolVLMAdapter
from models.loader import Placement, load_model
from tests.support.dark import dark_model


def _load(model_id: str, placement: Placement, *, seed: int = 0) -> ModelAdapter:
    tiny = load_model("tiny-random", placement, seed=seed)
    assert isinstance(tiny, SmolVLMAdapter)
    return dark_model(tiny)


if __name__ == "__main__":
    build_module.load_model = _load  # where serve loads its model (engine/build.py)
    sys.exit(main(["serve", *sys.argv[1:]]))
