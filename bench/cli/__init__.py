"""The command line: ``bench`` (``bench.cli.app``: the parser, ``main`` and its error lines) and its
subcommands (``bench.cli.commands``)."""

from bench.cli.app import main

__all__ = ["main"]
