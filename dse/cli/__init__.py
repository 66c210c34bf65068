"""The `dse` command: one module per command group; `main` parses and dispatches."""
from dse.cli.main import main

__all__ = ["main"]
