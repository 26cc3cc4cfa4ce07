"""A job module that raises at import."""

raise RuntimeError("this module is broken on purpose")
