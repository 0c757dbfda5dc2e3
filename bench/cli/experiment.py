"""``--config exp.yaml`` for ``bench run|sweep|study``: an experiment file's keys become the flags' defaults.

One validation path: a key names a long flag (``seeds``, ``eval-dataset``, ``n-eval``; ``set`` and ``params``
hold ``--set``/``--param`` as mappings; ``study``'s ``base`` and ``variants``), its value is turned into
what the flag would have received, and argparse parses the command line again with those defaults, so
a flag given on the command line wins (``--seed`` and ``--dataset`` also drop the file's ``seeds`` and
``datasets``, and the other way round). Before any work each value goes through the function the
flag's value goes through (``assemble``, ``registry.resolve``, ``Method.make_params``), and a bad one is
one line naming the file and the key. ``--dry-run --write-config out.yaml`` writes the experiment as
resolved (file + flags, methods expanded) once the plan has validated. The format itself (reading
safely, writing atomically, a run's own ``config.yaml``) is ``bench.runs.experiment_file``'s.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cli.commands import SHORT_FLAGS
from bench.config import ConfigError, preset
from bench.engine import progress
from bench.methodkit import registry
from bench.methodkit.post import run_params
from bench.runs.experiment_file import plain, read_experiment, write_experiment
from bench.runs.plan import RunRequest, assemble

NOT_SETTINGS = ("help", "config", "write_config", "dry_run", "json", "debug")  # how to run, not what
EXCLUSIVE = (("seed", "seeds"), ("dataset", "datasets"))  # a flag given for one drops the file's other
SAME_PLAN = {"run": ("run", "sweep"), "sweep": ("run", "sweep")}  # one plan, run here or as jobs: either file
RENAMED = {"param": "params"}  # the flag is given once per parameter; the key holds them all


def with_experiment(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace):
    """``args`` with the ``--config`` file's keys under the command line's flags (``args`` itself without one);
    with ``--write-config``, a handler that writes the resolved experiment after a successful dry run."""
    if getattr(args, "write_config", None) and not getattr(args, "dry_run", False):
        raise ConfigError(f"--write-config {args.write_config} is invalid without --dry-run: allowed --dry-run")
    if getattr(args, "config", None):
        command = _subcommand(parser, args.command)
        path = Path(args.config)
        command.set_defaults(**file_defaults(path, command, args, read_experiment(path)))
        args = argparse.Namespace(**{**vars(parser.parse_args(argv)), "argv": getattr(args, "argv", [])})
    if getattr(args, "write_config", None):
        args.handler = _writing(args.handler, _subcommand(parser, args.command), args)
    return args


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def settings(command: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """key → the action it sets: every option by its long name, and the positionals by their dest."""
    keys = {}
    for action in command._actions:
        if action.dest in NOT_SETTINGS or action.dest == argparse.SUPPRESS:
            continue
        long = [option[2:] for option in action.option_strings if option.startswith("--")]
        keys[RENAMED.get(action.dest, long[0] if long else action.dest)] = action
    return keys


def given(command: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the command line itself gives (a flag given with its default value counts): ``argv``
    (what follows the command) parsed again with every default suppressed, so only what was typed lands."""
    saved = [(action, action.default) for action in command._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = command.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(namespace))


def file_defaults(
    path: Path, command: argparse.ArgumentParser, args: argparse.Namespace, mapping: dict[str, Any]
) -> dict[str, Any]:
    """The file's keys as argparse defaults (dest → what the flag would hold), each value checked; ``args``
    is the command line parsed without the file."""
    keys, name, typed = settings(command), args.command, given(command, args.argv)
    if mapping.get("command", name) not in SAME_PLAN.get(name, (name,)):
        raise ConfigError(
            f"{path}: key 'command' is {mapping['command']!r}: allowed {name!r} (run it with "
            f"`bench {mapping['command']} --config {path}`)"
        )
    defaults: dict[str, Any] = {}
    for key, value in mapping.items():
        if key == "command":
            continue
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{path}: unknown key {key!r} ({hint}allowed: command, {', '.join(keys)})")
        action = keys[key]
        partner = dict(EXCLUSIVE + tuple((b, a) for a, b in EXCLUSIVE)).get(action.dest)
        if (action.dest in typed and key not in ("set", "params")) or partner in typed:
            continue  # the command line's flag wins (--set and --param add to the file's, later ones winning)
        defaults[action.dest] = _flag_value(path, key, action, value)
    check_values(path, defaults, keys, defaults.get("preset", args.preset))
    return defaults


def _text(path: Path, key: str, value: Any) -> str:
    """One value as a flag's string (YAML's numbers and booleans as the command line would spell them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    shown = "nothing" if value is None else type(value).__name__
    raise ConfigError(f"{path}: key {key!r} holds {shown}: allowed a single value (delete the key for the default)")


def _items(path: Path, key: str, value: Any) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{path}: key {key!r} is an empty list: allowed one value or more")
    return items


def _mapping(path: Path, key: str, value: Any, allowed: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{path}: key {key!r} is invalid: allowed a mapping {allowed}")
    return value


def _set_text(path: Path, key: str, value: Any) -> str:
    """A ``set`` value as ``--set FIELD=VALUE`` spells it: a list comma-joined, nothing as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(_text(path, key, item) for item in value)
    return _text(path, key, value)


def _flag_value(path: Path, key: str, action: argparse.Action, value: Any) -> Any:
    if key == "set":
        fields = _mapping(path, key, value, "of FIELD: VALUE, e.g. pretrain.warmup_epochs: 2")
        return [f"{field}={_set_text(path, f'set.{field}', item)}" for field, item in fields.items()]
    if key == "params":
        scopes = _mapping(path, key, value, "of METHOD (or '*'): {NAME: VALUE}, e.g. acl-ip: {alpha: 0.3}")
        flags = []
        for scope, names in scopes.items():
            names = _mapping(path, f"params.{scope}", names, "of NAME: VALUE, e.g. alpha: 0.3")
            prefix = "" if scope == "*" else f"{scope}:"
            flags += [f"{prefix}{name}={_set_text(path, f'params.{scope}.{name}', v)}" for name, v in names.items()]
        return flags
    if action.nargs == 0:  # a switch (--force, --download)
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: key {key!r} is {value!r}: allowed true or false")
        return value
    if action.nargs in ("+", "*"):
        texts = [_text(path, key, item) for item in _items(path, key, value)]
        for text in texts if action.choices is not None else ():
            if text not in action.choices:
                raise ConfigError(f"{path}: key {key!r} holds {text!r}: allowed {list(action.choices)}")
        return texts
    text = _text(path, key, value)
    if action.choices is not None and text not in action.choices:
        raise ConfigError(f"{path}: key {key!r} is {text!r}: allowed {list(action.choices)}")
    if action.type is not None:
        try:
            return action.type(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: key {key!r} is {text!r}: allowed a {action.type.__name__}") from None
    return text


def check_values(path: Path, defaults: dict[str, Any], keys: dict[str, argparse.Action], name: str) -> None:
    """Each value of the file through the function its flag's value goes through, before any work; a bad
    one is the flag's one-line error, after the file and the key. ``name``: the preset they apply to."""
    label = {action.dest: key for key, action in keys.items()}
    _blame(path, "preset", preset, name)
    config = [(label[dest], dotted, defaults[dest]) for dest, dotted in SHORT_FLAGS.items() if dest in defaults]
    for item in defaults.get("set", []):
        field, _, raw = item.partition("=")
        config.append((f"set.{field}", field, raw))
    for dest, dotted in (("seeds", "seed"), ("datasets", "data.name")):
        for raw in defaults.get(dest) or []:
            _blame(path, label[dest], assemble, RunRequest(preset=name, overrides={dotted: raw}))
    try:
        assemble(RunRequest(preset=name, overrides={dotted: raw for _, dotted, raw in config}))
    except ConfigError as error:  # the key that fails alone; else the combination does (the error names it)
        for key, dotted, raw in config:
            _blame(path, key, assemble, RunRequest(preset=name, overrides={dotted: raw}))
        raise ConfigError(f"{path}: {error}") from None
    for dest in ("methods", "base", "variants"):
        if dest in defaults:
            names = defaults[dest] if isinstance(defaults[dest], list) else [defaults[dest]]
            _blame(path, label[dest], registry.resolve, ",".join(names).split(","))
    for item in defaults.get("param", []):
        scoped, _, raw = item.partition("=")
        scope, _, parameter = scoped.rpartition(":")
        if scope:
            spelled = _blame(path, f"params.{scope}", registry.spelling, scope)
            # the plan's own reading: the post stage's parameters (acl++) and a published form's quirks (dynacl++)
            _blame(path, f"params.{scope}.{parameter}", run_params, registry.get(scope), spelled, {parameter: raw})


def _blame(path: Path, key: str, check: Callable[..., Any], *arguments: Any) -> Any:
    """``check(*arguments)``, its ConfigError prefixed with the file and the key."""
    try:
        return check(*arguments)
    except ConfigError as error:
        raise ConfigError(f"{path}: key {key!r}: {error}") from None


def resolved(command: argparse.ArgumentParser, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The experiment ``args`` hold (file and flags), every key with a value, methods expanded."""
    experiment: dict[str, Any] = {"command": name}
    for key, action in settings(command).items():
        value = getattr(args, action.dest, None)
        if value is None or value is False or value == [] or value == "":
            continue
        if key == "set":
            experiment[key] = {field: plain(raw) for field, _, raw in (item.partition("=") for item in value)}
        elif key == "params":
            scopes: dict[str, dict[str, Any]] = {}
            for item in value:
                scoped, _, raw = item.partition("=")
                scope, _, parameter = scoped.rpartition(":")
                scopes.setdefault(scope or "*", {})[parameter] = plain(raw)
            experiment[key] = scopes
        elif key == "methods":
            experiment[key] = registry.resolve(",".join(value).split(","))
        else:
            experiment[key] = [plain(item) for item in value] if isinstance(value, list) else plain(value)
    return experiment


def _writing(handler: Callable[[argparse.Namespace], int], command: argparse.ArgumentParser, args):
    """The command's handler, then (when it succeeded: the plan validated) the resolved experiment written."""

    def run(current: argparse.Namespace) -> int:
        status = handler(current)
        if status == 0:
            source = f" from {current.config} and the flags" if getattr(current, "config", None) else " from the flags"
            header = (
                f"bench {current.command} experiment, resolved{source}\nrun it: bench {current.command} --config FILE"
            )
            written = write_experiment(current.write_config, resolved(command, current.command, current), header)
            progress.log(f"experiment: {written}")
        return status

    return run
