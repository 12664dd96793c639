"""`python -m daemon.cli`: the same command line as the `eigenloop` entry point."""

from daemon.cli import app

app()
