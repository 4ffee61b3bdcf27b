"""Persistent state: the on-disk archive of clips and conversations (SQLite, WAL).

Floor 2 of the layers, beside ``models/``: it stores ``memory`` segments and plain text, and knows nothing
of the engine or the wire.
"""
