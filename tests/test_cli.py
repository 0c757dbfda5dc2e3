"""CLI: bad input fails before any work with one clear line; help is complete."""

from __future__ import annotations

import pytest

from bench.cli.app import build_parser, main


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


@pytest.mark.e2e
def test_run_and_report_print_json_for_scripts(tmp_path, capsys):
    """`bench run --json` ends with one JSON object (each run's id, status and flags, the results and the
    report files) and nothing else on stdout; `bench report --json` lists the files it wrote."""
    import json
    from pathlib import Path

    results, reports = tmp_path / "r", tmp_path / "rep"
    flags = ["--results-dir", str(results), "--reports-dir", str(reports), "--device", "cpu", "--jobs", "1"]
    tiny = ["--epochs", "1", "--finetune-epochs", "1", "--n-eval", "16", "--attacks", "clean", "--schemes", "SLF"]
    assert main(["run", "--methods", "simclr", *tiny, *flags, "--json", "--no-figures"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (run,) = summary["runs"]
    assert (run["method"], run["status"], run["flags"]) == ("simclr", "completed", [])
    assert (results / "runs" / run["run_id"] / "done.json").exists()
    assert summary["results"] == str(results / "results.csv")
    assert str(reports / "index.md") in summary["reports"] and all(Path(p).exists() for p in summary["reports"])
    again = ["report", "--results-dir", str(results), "--reports-dir", str(tmp_path / "again"), "--json"]
    assert main([*again, "--no-figures"]) == 0
    written = json.loads(capsys.readouterr().out)["reports"]
    assert sorted(Path(p).name for p in written) == sorted(Path(p).name for p in summary["reports"])
    # --no-figures: the tables, pages and index, not a figure (the figures are most of a report's time)
    assert not (reports / "figures").exists() and not (tmp_path / "again" / "figures").exists()
    assert {"results.md", "sanity.md", "index.html", "index.md"} <= {Path(p).name for p in written}
    assert "- Figures: not drawn (--no-figures)" in (tmp_path / "again" / "index.md").read_text()
    assert "<p>Figures not drawn (--no-figures).</p>" in (tmp_path / "again" / "index.html").read_text()


def test_no_figures_reaches_the_report_of_a_sweep_s_collect_job_and_refuses_curve_methods(
    tmp_path, monkeypatch, capsys
):
    """`bench stage collect --no-figures` (a sweep's collect job) writes its report without figures;
    `bench report --curve-methods` selects what a figure draws, so it is refused with `--no-figures`."""
    import bench.cli.products

    calls = []
    monkeypatch.setattr(bench.cli.products, "write_report", lambda dirs, **kwargs: calls.append(kwargs) or [])
    (tmp_path / "r").mkdir()
    dirs = ["--set", f"results_dir={tmp_path / 'r'}", "--set", f"reports_dir={tmp_path / 'rep'}"]
    assert main(["stage", "collect", *dirs, "--no-figures"]) == 0
    assert main(["stage", "collect", *dirs]) == 0
    assert [call["figures"] for call in calls] == [False, True]
    code = main(["report", "--results-dir", str(tmp_path / "r"), "--curve-methods", "acl", "--no-figures"])
    assert code == 2 and "--curve-methods is invalid with --no-figures" in capsys.readouterr().err
