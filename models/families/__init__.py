"""One module per model family, named after its ``config.model_type``; each defines ``FAMILY``, a
:class:`models.registry.FamilySpec`. Adding a family is adding a file here (see :mod:`models.registry`).

Importing this package imports no family (and no torch): the registry lists the files without loading them.
"""
