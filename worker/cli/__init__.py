"""The `styledrop` command line: the service's commands (`commands.py`), account administration (`users.py`) and the
engine's own commands (trainer/cli.py). Run as `styledrop ...` (pyproject.toml's entry point names `main` here)
or `python -m worker.cli ...`."""

from worker.cli.commands import main

__all__ = ["main"]
