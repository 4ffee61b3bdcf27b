"""Ingest: video sources that yield :class:`stream.frame.Frame` objects.

PyAV and aiortc objects never leave this package; everything downstream sees only ``Frame``.
"""
