"""livesight: a real-time streaming video assistant.

The application package: typed errors, configuration, the engine that wires sources, memory and the
model together, and the command line. The ingest, memory, model and web layers live in the top-level
packages ``stream``, ``memory``, ``models`` and ``web``.
"""

__version__ = "0.1.0"
