"""Entry point of the ``rapki`` operator CLI: the group and its registered commands."""

from service.cli.base import main

# Each module below adds its commands to ``main`` when imported.
from service.cli import ca_commands  # noqa: E402,F401

__all__ = ["main"]
