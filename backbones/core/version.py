"""The package version: one place, read by pyproject.toml, ``config.json`` and ``--version``."""

__version__ = "0.2.0"
