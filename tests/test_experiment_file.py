"""Experiment files (``--config exp.yaml``): the examples resolve, bad keys and values fail in one line naming
the file and the key, flags given on the command line beat the file, and a run directory's ``config.yaml``
resolves to that run's id (bench.cli.experiment, bench.runs.experiment_file)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml
from tiny_run import TINY

from bench.cli.app import main
from bench.methodkit import registry
from bench.runs.collect import merge_stores
from bench.runs.experiment_file import plain, read_experiment, write_run_experiment
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore, RunDir

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


def _dirs(tmp_path: Path) -> list[str]:
    return ["--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep")]


def _run_ids(argv: list[str], capsys) -> list[str]:
    """The run ids a dry run of ``argv`` resolves, in plan order."""
    capsys.readouterr()
    assert main([*argv, "--dry-run", "--json"]) == 0, capsys.readouterr().err
    ids = [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines() if '"run_id"' in line]
    return list(dict.fromkeys(ids))


def _write(tmp_path: Path, mapping: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


# the flags each example stands for: its runs must be theirs (a file holds what the flags hold)
SAME_AS = {
    "smoke.yaml": ["run", "--methods", "all"],
    "ainfonce_table1.yaml": ["reproduce", "ainfonce-table1"],
    "study.yaml": ["study", "acl", "acl-ip", "--schemes", "SLF", "--attacks", "pgd20"],
}


def test_every_example_is_covered():
    assert [path.name for path in EXAMPLES] == sorted(SAME_AS)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_each_example_resolves_with_dry_run_to_the_runs_of_its_flags(example, tmp_path, capsys):
    command = read_experiment(example)["command"]
    from_file = _run_ids([command, "--config", str(example), *_dirs(tmp_path)], capsys)
    assert from_file and from_file == _run_ids([*SAME_AS[example.name], *_dirs(tmp_path)], capsys)


def _fails(argv: list[str], capsys, *expected: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_an_unknown_key_names_the_file_the_key_and_the_closest_allowed(tmp_path, capsys):
    path = _write(tmp_path, {"methods": ["acl"], "sedes": [0, 1]})
    err = _fails(["run", "--config", str(path), *_dirs(tmp_path)], capsys, f"{path}: unknown key 'sedes'")
    assert "did you mean 'seeds'?" in err and "allowed: command, " in err and "n-eval" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("mapping", "key", "flags_error"),
    [
        ({"seed": -1}, "key 'seed'", "seed=-1 is invalid: allowed integers >= 0"),
        ({"epochs": "many"}, "key 'epochs'", "pretrain.epochs='many' is invalid"),
        ({"epsilon": 2}, "key 'epsilon'", "evaluate.epsilon=2.0 is invalid"),
        ({"set": {"pretrain.lr": -1}}, "key 'set.pretrain.lr'", "pretrain.lr=-1.0 is invalid"),
        ({"set": {"pretrain.nope": 1}}, "key 'set.pretrain.nope'", "field='pretrain.nope' is invalid"),
        ({"set": ["pretrain.lr=1"]}, "key 'set' is invalid", "allowed a mapping"),
        ({"preset": "huge"}, "key 'preset'", "preset='huge' is invalid: allowed ['smoke', 'paper']"),
        ({"methods": ["nope"]}, "key 'methods'", "'nope' is not registered: allowed"),
        ({"seeds": [0, "x"]}, "key 'seeds'", "seed='x' is invalid"),
        ({"datasets": ["mnist"]}, "key 'datasets'", "data.name='mnist' is invalid"),
        ({"params": {"acl-ip": {"alpha": 1.5}}}, "key 'params.acl-ip.alpha'", "alpha=1.5 is invalid"),
        ({"params": {"nope": {"alpha": 0.1}}}, "key 'params.nope'", "'nope' is not registered"),
        ({"post": "zz"}, "key 'post' is 'zz'", "allowed ['pp']"),
        ({"force": "yes"}, "key 'force' is 'yes'", "allowed true or false"),
        ({"seed": None}, "key 'seed' holds nothing", "delete the key"),
        ({"command": "study"}, "key 'command' is 'study'", "bench study --config"),
    ],
)
def test_a_bad_value_is_the_flags_error_after_the_file_and_the_key(tmp_path, capsys, mapping, key, flags_error):
    path = _write(tmp_path, mapping)
    _fails(["run", "--config", str(path), *_dirs(tmp_path)], capsys, f"{path}: {key}", flags_error)
    assert not (tmp_path / "r").exists()


def test_a_file_that_is_not_an_experiment_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("methods: [acl\nseed: 0\n")
    _fails(["run", "--config", str(broken)], capsys, f"{broken}: not valid YAML", "line ")
    _fails(["run", "--config", str(_write(tmp_path, ["acl"], "list.yaml"))], capsys, "holds list: allowed a mapping")
    _fails(["run", "--config", str(tmp_path / "missing.yaml")], capsys, "missing.yaml is invalid")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block: refused from its mode alone
    _fails(["run", "--config", str(fifo)], capsys, "not a regular file")


def test_python_objects_in_a_file_are_never_built(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    _fails(["run", "--config", str(path)], capsys, f"{path}: not valid YAML")


def test_flags_given_on_the_command_line_beat_the_file(tmp_path, capsys):
    path = _write(
        tmp_path,
        {"preset": "paper", "methods": ["acl"], "seeds": [0, 1], "set": {"pretrain.epochs": 3, "pretrain.lr": 0.5}},
    )
    config = ["run", "--config", str(path), *_dirs(tmp_path)]
    assert [run_id.split("-s")[0] for run_id in _run_ids(config, capsys)] == ["acl-paper-cifar10"] * 2
    # --preset given with the parser's default value still wins; --seed drops the file's seeds
    flags = ["--preset", "smoke", "--seed", "2", "--methods", "acl-ip", "--set", "pretrain.epochs=1"]
    (run_id,) = _run_ids([*config, *flags], capsys)
    same = ["run", "--methods", "acl-ip", "--seed", "2", "--set", "pretrain.lr=0.5", "--set", "pretrain.epochs=1"]
    assert run_id.startswith("acl-ip-smoke-digits-s2-") and [run_id] == _run_ids([*same, *_dirs(tmp_path)], capsys)


def test_a_run_file_sweeps_and_a_study_file_is_refused_by_run(tmp_path, capsys):
    smoke = next(path for path in EXAMPLES if path.name == "smoke.yaml")
    capsys.readouterr()
    assert main(["sweep", "--config", str(smoke), "--methods", "acl", "--dry-run", "--json", *_dirs(tmp_path)]) == 0
    (job,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"pretrain"' in line]
    assert job["run_id"] == _run_ids(["run", "--methods", "acl", *_dirs(tmp_path)], capsys)[0]
    study = next(path for path in EXAMPLES if path.name == "study.yaml")
    _fails(["sweep", "--config", str(study)], capsys, f"{study}: key 'command' is 'study': allowed 'sweep'")


def test_write_config_gives_the_resolved_experiment_back(tmp_path, capsys):
    path = _write(tmp_path, {"methods": ["acl*"], "epochs": 2, "params": {"*": {"alpha": 0.3}}})
    out = tmp_path / "resolved.yaml"
    argv = ["run", "--config", str(path), "--seeds", "0", "1", *_dirs(tmp_path)]
    ids = _run_ids([*argv, "--write-config", str(out)], capsys)
    written = read_experiment(out)
    assert written["methods"] == registry.resolve(["acl*"]) and written["seeds"] == [0, 1]  # the pattern expanded
    assert written["params"] == {"*": {"alpha": 0.3}} and written["epochs"] == 2
    assert _run_ids(["run", "--config", str(out), *_dirs(tmp_path)], capsys) == ids
    _fails([*argv, "--write-config", str(tmp_path / "x.yaml")], capsys, "--write-config", "without --dry-run")
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(
    "request_",
    [
        RunRequest(methods=("acl", "acl-ip"), method_params={"*": {"alpha": "0.3"}}, seeds=("0", "4")),
        RunRequest(
            methods=("rocl-iphn",),
            overrides={"evaluate.epsilon": "8/255", "finetune.schemes": "SLF", "device": "cpu", "seed": "3"},
            method_params={"rocl-iphn": {"beta": "2"}},
        ),
        RunRequest(preset="paper", methods=("advcl-ip",), overrides={"finetune.protocol": "ainfonce"}),
        RunRequest(methods=("acl++",), overrides={"evaluate.epsilon_curve": "", "data.download": "true"}),
        RunRequest(methods=("simclr", "deacl"), method_params={"simclr": {"temperature": "0.2"}}),
        RunRequest(methods=("simclr", "deacl"), method_params={"*": {"temperature": "0.2"}}),
        # a published post form's quirk, read for the stage though the method alone refuses it
        RunRequest(methods=("dynacl++",), method_params={"dynacl++": {"quirks": "official", "post_epochs": "3"}}),
    ],
    ids=["unscoped-param", "set-and-scoped", "protocol", "post", "teacher-param", "teacher-shared-param", "post-form"],
)
def test_a_runs_config_yaml_resolves_to_its_run_id(request_, tmp_path, capsys):
    plan = build_plan(dataclasses.replace(request_, dry_run=True))  # nothing fetched
    for run in plan.runs:
        written = write_run_experiment(RunDir(tmp_path / run.run_id), run)
        ids = _run_ids(["run", "--config", str(written), *_dirs(tmp_path)], capsys)
        assert ids[-1] == run.run_id and set(ids) <= {other.run_id for other in plan.runs}


def test_plain_scalars_read_back_as_the_same_flag_string():
    for text in ("8", "0.5", "8/255", "SLF,ALF", "true", "1e-3", "007", "", "none"):
        assert str(plain(text)).lower() == text.lower() or plain(text) == text


@pytest.mark.e2e
def test_the_smoke_example_end_to_end_and_its_stored_config_reruns_the_same_run(tmp_path, capsys):
    smoke = next(path for path in EXAMPLES if path.name == "smoke.yaml")
    assert main(["run", "--config", str(smoke), "--methods", "acl", *TINY, *_dirs(tmp_path)]) == 0
    (run,) = ResultsStore(tmp_path / "r").run_dirs()
    assert run.is_complete() and run.experiment.is_file()
    stored = ["run", "--config", str(run.experiment), *_dirs(tmp_path)]
    assert _run_ids(stored, capsys) == [run.run_id]
    assert main([*stored, "--quiet", "--no-report", "--json"]) == 0  # the same run id: found complete, skipped
    assert [(o["run_id"], o["status"]) for o in json.loads(capsys.readouterr().out)["runs"]] == [
        (run.run_id, "skipped")
    ]
    merged = ResultsStore(tmp_path / "merged")
    assert merge_stores(merged, [tmp_path / "r"]).copied == [run.run_id]  # the store's rules accept the file
    assert merged.run(run.run_id).experiment.read_text() == run.experiment.read_text()


def test_the_readme_example_resolves_and_a_flag_beats_its_seeds(tmp_path, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```yaml\n# exp.yaml", 1)[1].split("```", 1)[0]
    path = tmp_path / "exp.yaml"
    path.write_text("# exp.yaml" + block)
    argv = ["run", "--config", str(path), *_dirs(tmp_path)]
    assert sorted(run_id.split("-smoke-digits-")[1][:2] for run_id in _run_ids(argv, capsys)) == [
        "s0",
        "s0",
        "s1",
        "s1",
        "s2",
        "s2",
    ]
    assert len(_run_ids([*argv, "--seed", "3"], capsys)) == 2
