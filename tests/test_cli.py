"""CLI: bad input fails before any work with one clear line; help is complete."""

from __future__ import annotations

import pytest

from bench.cli import build_parser, main


def _fails_cleanly(args, tmp_path, capsys, expected):
    code = main([*args, "--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not (tmp_path / "r" / "results.csv").exists()


def test_bad_method_name(tmp_path, capsys):
    _fails_cleanly(["run", "--methods", "nope"], tmp_path, capsys, "'nope' is not registered: allowed")


def test_bad_preset(tmp_path, capsys):
    _fails_cleanly(
        ["run", "--preset", "huge"], tmp_path, capsys, "preset='huge' is invalid: allowed ['smoke', 'paper']"
    )


def test_negative_epsilon(tmp_path, capsys):
    _fails_cleanly(["run", "--epsilon", "-0.1"], tmp_path, capsys, "evaluate.epsilon=-0.1 is invalid")


def test_missing_dataset(tmp_path, capsys):
    _fails_cleanly(
        ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")],
        tmp_path,
        capsys,
        f"not found in {tmp_path / 'nowhere'}: pass --download",
    )


def test_bad_method_parameter(tmp_path, capsys):
    _fails_cleanly(["run", "--methods", "acl-ip", "--param", "alpha=1.5"], tmp_path, capsys, "alpha=1.5 is invalid")


def test_unknown_field(tmp_path, capsys):
    _fails_cleanly(["run", "--set", "pretrain.nope=1"], tmp_path, capsys, "field='pretrain.nope' is invalid")


@pytest.mark.parametrize(
    "command", ["run", "list", "pretrain", "finetune", "evaluate", "report", "reproduce", "export", "compare"]
)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bench" in out and len(out.splitlines()) > 3
