"""The engine: streams, their memories and the one inference worker, emitting typed events.

Floor 3 of the layers (docs/design.md): it uses ``stream/``, ``memory/`` and ``models/`` and knows nothing
of the wire; ``web/`` turns its events into protocol messages. Import from the modules:
:mod:`engine.engine` (the engine), :mod:`engine.events` (what it emits; light, no torch).
"""
