"""Vision-language model adapters behind one small Protocol (see :mod:`models.adapter`)."""
