"""The ``bench`` command answers at once, and a mistyped name gets a "did you mean" (issue #22 point 4).

``bench --version``, ``bench --help`` and every ``bench <cmd> --help`` build the parser from light
modules only: torch, pandas and the method zoo are imported when a command runs (``bench.cli.app``'s
``_command``). Checked by the modules a process loaded, not by wall time (portable across machines);
``scripts/cli_latency.py`` measures the seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.choices
import bench.config
import bench.engine.checkpoints
import bench.engine.data
import bench.errors
from bench.cli import app, parsing
from bench.coercion import invalid
from bench.config import RunConfig, preset, set_field
from bench.errors import ConfigError, closest, did_you_mean
from bench.evaluation.protocol_resolution import get_protocol
from bench.methodkit import registry
from bench.products.compare import compare_command
from bench.products.export import export_run
from bench.store.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "numpy", "scipy", "matplotlib", "sklearn", "submitit", "rich", "methods")

# Runs --version, --help and each subcommand's --help (the names from the parser itself) in one
# process, then prints the heavy top-level packages it loaded.
ALL_HELP = """
import contextlib, io, sys
from bench.cli.app import build_parser, main
commands = list(build_parser()._subparsers._group_actions[0].choices)
for argv in (["--version"], ["--help"], *[[command, "--help"] for command in commands]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as done:
            assert done.code == 0, (argv, done.code)
    assert out.getvalue().strip(), argv
print(len(commands), sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:])))
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_version_and_every_help_load_no_heavy_package():
    done = _python("-c", ALL_HELP, *HEAVY)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) >= 15  # every subcommand was asked for its help
    assert loaded.strip() == "[]"


@pytest.mark.e2e
def test_version_as_the_console_runs_it_imports_no_torch():
    """``python -X importtime -m bench.cli --version``: the import log names every module loaded."""
    done = _python("-X", "importtime", "-m", "bench.cli", "--version")
    assert done.returncode == 0 and done.stdout.startswith("acl-bench "), done.stderr
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "bench" in loaded  # the log is read right
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_every_subcommand_resolves_to_its_function():
    """A deferred handler names its function by a string: a typo would surface only when the command
    runs, so every one is resolved here."""
    parser = app.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        handler = sub.get_default("handler")
        implementation = (
            parsing._implementation(handler.__name__) if handler.__module__ == parsing.__name__ else handler
        )
        assert callable(implementation) and implementation.__name__.startswith("cmd_"), name


def test_moved_errors_and_name_tables_are_the_same_objects():
    """Old import places keep working, as the same objects: an ``except`` of either catches both."""
    assert bench.engine.checkpoints.CheckpointError is bench.errors.CheckpointError
    assert bench.engine.data.DatasetMissingError is bench.errors.DatasetMissingError
    assert bench.config.ConfigError is bench.errors.ConfigError
    assert bench.config.SCHEMES is bench.choices.SCHEMES
    assert bench.engine.data.DATASETS is bench.choices.DATASETS
    assert bench.engine.checkpoints.FORMATS is bench.choices.CHECKPOINT_FORMATS


@pytest.mark.parametrize(
    ("value", "allowed", "hint"),
    [
        ("acl-pi", ["acl", "acl-ip", "acl-hn", "advcl-ip"], " (did you mean 'acl-ip'?)"),
        ("slf", ["SLF", "ALF", "AFF"], " (did you mean 'SLF'?)"),  # case is ignored
        ("pgd-20", ["clean", "pgd20", "autoattack", "apgd-ce"], " (did you mean 'pgd20'?)"),
        ("robusssl", ["unified", "robustssl", "ainfonce", "dynacl"], " (did you mean 'robustssl'?)"),
        ("ALF", ["SLF"], ""),  # a valid name the runs lack is no typo of another
        ("huge", ["smoke", "paper"], ""),
        ("SLF", ["SLF"], ""),
    ],
)
def test_did_you_mean(value, allowed, hint):
    assert did_you_mean(value, allowed) == hint


def test_closest_gives_several_best_first():
    names = ["acl-hn", "simclr", "acl-iphn", "acl-ip1"]
    assert closest("acl-ip", names, n=5, cutoff=0.6) == ["acl-ip1", "acl-iphn", "acl-hn"]
    assert closest("acl-ip", names, n=5) == ["acl-ip1", "acl-iphn"]  # the default cutoff drops acl-hn


@pytest.mark.parametrize(
    ("raise_it", "message"),
    [
        (lambda: registry.get("acl-pi"), "method 'acl-pi' is not registered (did you mean 'acl-ip'?): allowed ["),
        (lambda: preset("smok"), "preset='smok' is invalid (did you mean 'smoke'?): allowed ['smoke', 'paper']"),
        (lambda: get_protocol("robusssl"), "protocol='robusssl' is invalid (did you mean 'robustssl'?): allowed"),
        (
            lambda: set_field(RunConfig(), "pretrain.lrr", "1"),
            "field='pretrain.lrr' is invalid (did you mean 'pretrain.lr'?)",
        ),
        (
            lambda: invalid("evaluate.attacks", "autoatack", "[...]", bench.choices.ATTACKS),
            "(did you mean 'autoattack'?)",
        ),
    ],
)
def test_unknown_names_are_answered_with_the_nearest(raise_it, message):
    with pytest.raises(ConfigError) as error:
        raise_it()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_settings_through_the_command_name_the_nearest(tmp_path, capsys):
    code = app.main(["run", "--schemes", "SLF,alf", "--dry-run", "--results-dir", str(tmp_path), "--quiet"])
    assert code == 2
    assert "finetune.schemes='alf' is invalid (did you mean 'ALF'?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [(["compar"], "'compar' (did you mean 'compare'?)"), (["sweep", "--launcher", "slurn"], "(did you mean 'slurm'?)")],
)
def test_the_parser_s_choices_name_the_nearest(argv, hint, capsys):
    with pytest.raises(SystemExit) as done:
        app.build_parser().parse_args(argv)
    assert done.value.code == 2
    assert hint in capsys.readouterr().err


def _store(root: Path, *run_ids: str) -> ResultsStore:
    """A store whose runs are bare directories (``RunDir.is_run`` accepts one), oldest first."""
    for age, run_id in enumerate(reversed(run_ids)):
        path = root / "runs" / run_id
        path.mkdir(parents=True)
        os.utime(path, (time.time() - 100 * age,) * 2)
    return ResultsStore(root)


def test_run_id_errors_list_the_closest_stored_ones(tmp_path):
    ids = [f"acl-smoke-digits-s{seed}-1a2b3c4d" for seed in range(7)] + ["simclr-smoke-digits-s0-99ffee00"]
    store = _store(tmp_path, *ids)
    near = store.near("acl-smoke-digits-s3-1a2b3c4e")  # one character off
    assert near.startswith("closest stored: acl-smoke-digits-s3-1a2b3c4d, ")
    assert len(near.removeprefix("closest stored: ").split(", ")) == 5
    assert store.near("zzz") == "newest stored: simclr-smoke-digits-s0-99ffee00, " + ", ".join(
        reversed(ids[3:7])
    )  # nothing near: the five newest, newest first
    assert ResultsStore(tmp_path / "empty").near("x") == f"{tmp_path / 'empty' / 'runs'} holds no runs"


def test_export_and_compare_name_stored_run_ids(tmp_path):
    _store(tmp_path, "acl-smoke-digits-s0-1a2b3c4d", "rocl-smoke-digits-s0-5e6f7a8b")
    with pytest.raises(
        ConfigError,
        match=r"run_id='acl-smoke-digits-s0-1a2b3c4' is invalid: allowed a run id in .*"
        r"\(closest stored: acl-smoke-digits-s0-1a2b3c4d",
    ):
        export_run(tmp_path, "acl-smoke-digits-s0-1a2b3c4", "AFF", tmp_path / "out.pt")
    with pytest.raises(ConfigError, match=r"'byorl' is invalid: allowed a run id in .* \(newest stored: "):
        compare_command("acl-smoke-digits-s0-1a2b3c4d", "byorl", tmp_path)
