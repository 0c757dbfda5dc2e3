"""The parser's building blocks: one-line usage errors with a "did you mean", a ``--version`` that asks
git only when given, and subcommand handlers that import their command's module only when it runs
(``bench --help`` must not load torch, issue #22)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench.errors import did_you_mean
from bench.store.provenance import code_version


class VersionAction(argparse.Action):
    """``--version``: asks git for the commit only when the flag is given (argparse's own action
    needs the text while the parser is built, i.e. two git calls on every command)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"acl-bench {code_version()}")  # stdout, as argparse's own version action
        parser.exit()


def command_handler(name: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's handler that imports the command's module when the command runs, not when the
    parser is built: those modules load torch, pandas and the method zoo, and ``bench --help``, ``bench
    --version`` and ``bench <cmd> --help`` answer without them (issue #22)."""

    def handler(args: argparse.Namespace) -> int:
        return _implementation(name)(args)

    handler.__name__ = handler.__qualname__ = name
    return handler


def _implementation(name: str) -> Callable[[argparse.Namespace], int]:
    """The function ``name`` of the module that implements it; a missing one is a bug, not bad input."""
    if name == "cmd_speed":
        from bench.cli.speed import cmd_speed  # deferred: torch (the measuring, bench.products.speed)

        return cmd_speed
    if name == "cmd_stage":
        from bench.cli.stage import cmd_stage  # deferred: torch and the run machinery (a sweep's job)

        return cmd_stage
    if name in ("cmd_report", "cmd_compare", "cmd_export"):
        import bench.cli.products as products  # deferred: torch, pandas, scipy, matplotlib (the report stack)

        return getattr(products, name)
    import bench.cli.commands as commands  # deferred: torch and the method zoo

    return getattr(commands, name)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser with a "did you mean" in its unknown-choice error (``bench compar``, ``--scheme
    slf``, ``--launcher slurn``), and every usage error one line and exit 2, like every other bad input
    (argparse printed the whole usage, 17 to 24 lines, before its message). The subcommands' parsers
    are of the same class (``add_subparsers``)."""

    def _check_value(self, action, value):  # argparse's one check of ``choices`` (3.10 to 3.13)
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(value, action.choices)
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint} (choose from {choices})")

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but an unknown flag is the subcommand's error (``bench run: error: …``): argparse
        hands a subcommand's leftovers up and reports them as the top parser's."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = [action for action in self._actions if isinstance(action, argparse._SubParsersAction)]
            owner = commands[0].choices.get(getattr(parsed, commands[0].dest, None)) if commands else None
            (owner or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed
