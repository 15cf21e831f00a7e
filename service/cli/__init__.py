"""Entry point of the ``rapki`` operator CLI: the group and its registered commands."""

# Each module below adds its commands to ``main`` when imported.
from service.cli import (
    aws_commands,  # noqa: F401
    ca_commands,  # noqa: F401
    cert_commands,  # noqa: F401
    emulator_commands,  # noqa: F401
    serve_commands,  # noqa: F401
)
from service.cli.base import main

__all__ = ["main"]
