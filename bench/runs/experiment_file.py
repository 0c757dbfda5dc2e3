"""Experiment files: a YAML mapping that holds what the flags of ``bench run|sweep|study`` hold.

This module owns the file format (reading one safely, writing one atomically) and the one experiment a
run directory keeps, ``config.yaml``: the single-run request the run was resolved from, so that
``bench run --config results/runs/<id>/config.yaml`` resolves to the same run id. How a file's keys
become flags (and how flags given on the command line win) is the CLI's (``bench.cli.experiment``):
the file supplies argparse defaults and every value then takes the flags' own validation path.

Why the request and not every resolved setting: the run id hashes the config the request resolves to,
and under a published protocol the finetuning settings may not be overridden at all, so writing every
resolved field back as an override would be refused. ``config.json`` beside it keeps every resolved
setting; ``config.yaml`` keeps what reproduces them.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from bench.coercion import field_types
from bench.errors import ConfigError
from bench.methodkit import registry
from bench.methodkit.post import POST_FIELDS
from bench.runs.plan import VOLATILE_FIELDS, MethodRun
from bench.store.atomic import write_atomic
from bench.store.results import RunDir

MAX_BYTES = 1 << 20  # an experiment is a few lines; a larger file is a wrong path, not an experiment
# Request overrides with a key of their own in a run's file; every other dotted override goes under ``set``.
OWN_KEYS = {"seed": "seed", "data.name": "dataset", "finetune.protocol": "protocol"}


def read_experiment(path: str | Path) -> dict[str, Any]:
    """The file's top-level mapping (``yaml.safe_load``: plain data, no Python objects), or one line saying
    why it cannot be one. Only a regular file is read (a FIFO or /dev/zero would block or never end)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"--config {path} is invalid: {reason}; allowed an existing YAML file") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--config {path} is invalid: not a regular file; allowed a YAML file")
    if path.stat().st_size > MAX_BYTES:
        raise ConfigError(f"--config {path} is invalid: over {MAX_BYTES} bytes; allowed an experiment file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; allowed a YAML file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: holds {type(loaded).__name__}: allowed a mapping of keys (methods: ..., seeds: ...)"
        )
    for key in loaded:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is invalid: allowed names of flags, e.g. seeds")
    return loaded


def plain(text: Any) -> Any:
    """A flag's string as the YAML scalar that reads back as the same string: ``'8'`` as 8, ``'0.5'`` as 0.5,
    ``'true'`` as true; anything else (``'8/255'``, ``'SLF,ALF'``) stays a string."""
    if not isinstance(text, str):
        return text
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if str(value) == text else text
    return text


def dump_experiment(mapping: dict[str, Any], header: str = "") -> str:
    """YAML text: the keys in the order given, a ``# ``-commented header first."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_experiment(path: str | Path, mapping: dict[str, Any], header: str = "") -> Path:
    return write_atomic(path, dump_experiment(mapping, header))


def run_experiment(run: MethodRun) -> dict[str, Any]:
    """The ``bench run`` experiment that resolves to ``run`` alone, with the same run id.

    It is the single-seed, single-dataset request the run was resolved from (``MethodRun.request``)
    narrowed to this method: seed, dataset and protocol explicit, the other overrides under ``set``
    as given, and only the method parameters it (or its teacher) reads. Where and how the run executes
    (device, jobs, results and reports directories) is left out: it is outside the run id."""
    request = run.request
    if request is None:
        raise ValueError(f"run {run.run_id} carries no request to write an experiment from")
    method = run.method_class
    teacher = registry.get(method.teacher.method) if "teacher" in run.inputs and method.teacher else None
    readers = [method] + ([teacher] if teacher is not None else [])
    # scoped by the run's label (acl++), whose post stage reads the post_* parameters too
    scopes = [run.method] + ([teacher.name] if teacher is not None else [])
    scoped = {scope: dict(request.method_params.get(scope, {})) for scope in scopes}
    # an unscoped parameter no method of the file reads changed nothing, and would be refused as a typo
    shared = {
        key: value
        for key, value in request.method_params.get("*", {}).items()
        if _read_by(key, readers) or (run.post and key in POST_FIELDS)
    }
    methods = [run.method]
    own = [key for key in shared if not (_read_by(key, [method]) or (run.post and key in POST_FIELDS))]
    if teacher is not None and (scoped[teacher.name] or own):
        methods = [teacher.name, run.method]  # the teacher's parameters need it selected
    overrides = {key: value for key, value in request.overrides.items() if key not in VOLATILE_FIELDS}
    experiment: dict[str, Any] = {
        "command": "run",
        "preset": run.config.preset,
        "methods": methods,
        "seed": run.config.seed,
        "dataset": run.config.data.name,
    }
    if "finetune.protocol" in overrides:
        experiment["protocol"] = overrides["finetune.protocol"]
    extra = {key: plain(value) for key, value in overrides.items() if key not in OWN_KEYS}
    if extra:
        experiment["set"] = extra
    params = {scope: values for scope, values in (("*", shared), *scoped.items()) if values}
    if params:
        experiment["params"] = {scope: {k: plain(v) for k, v in values.items()} for scope, values in params.items()}
    return experiment


def _read_by(key: str, methods: list) -> bool:
    return any(key in field_types(cls.Params) and key not in cls.unread_params() for cls in methods)


def write_run_experiment(run_dir: RunDir, run: MethodRun) -> Path:
    """``config.yaml`` of a run directory (beside ``config.json``)."""
    header = (
        f"run {run.run_id}\n"
        f"`bench run --config {run_dir.experiment.name}` resolves to this run id (every resolved setting is in\n"
        f"{run_dir.config.name}); device, jobs and the results/reports directories are the flags'."
    )
    return write_experiment(run_dir.experiment, run_experiment(run), header)
