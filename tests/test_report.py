"""Reports from a hand-written results store: tables, plots, index and the paper table.

The store is written by the tests (no training), so every expected number is known by hand.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_stores import EPS_PAPER, EPS_SMOKE, GOLDEN_ORDER, REPO, REPO_REFERENCE, write_sanity
from report_stores import row as _row
from report_stores import synthetic_rows as _rows
from report_stores import write_reference as _write_reference
from report_stores import write_store as _write_store

from bench.products.report import (
    UNSPECIFIED_AINFONCE,
    epsilon_series,
    load_reference,
    write_paper_tables,
    write_reports,
)
from bench.products.stats import minimum_detectable_difference
from bench.store.rows import load

CONVERTER = REPO / "results" / "reference" / "convert_leaderboard.py"


def _report(root: Path) -> None:
    results_csv = _write_store(root, _rows())
    reference = _write_reference(root / "reference")
    written = write_reports(
        results_csv, root / "reports", root / "results" / "runs", reference, paper=False, method_order=GOLDEN_ORDER
    )
    (root / "written.json").write_text(json.dumps([str(path) for path in written]))


@pytest.fixture(scope="module")
def report(shared_folder):
    """The reports of one store with figures (about 3 s), once per session (``shared_folder``)."""
    root = shared_folder("report-module-store", _report)
    return root / "reports", [Path(path) for path in json.loads((root / "written.json").read_text())]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _markdown_section(text: str, marker: str) -> str:
    return next(part for part in text.split("### ") if part.startswith(marker))


def _table_line(section: str, method: str) -> list[str]:
    line = next(line for line in section.splitlines() if line.startswith(f"| {method} |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_report_reads_the_store_typed(tmp_path):
    rows = load(_write_store(tmp_path, _rows()))
    assert rows["value"][0] == 90.0 and rows["seed"][1] == 1 and rows["epsilon"][0] == EPS_SMOKE
    assert rows["flags"][8] == rows["flags"][9] == "suspect:aa>pgd20" and rows["flags"][0] == ""
    assert rows["epsilon"][12] == EPS_PAPER and rows["dataset"][12] == "cifar10"


def test_missing_results_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "results.csv"
    with pytest.raises(FileNotFoundError, match=r"no results at .*results\.csv: run `bench run` first"):
        write_reports(missing, tmp_path / "reports", tmp_path / "runs", None)
    assert not (tmp_path / "reports").exists()


@pytest.mark.e2e
def test_markdown_table_content(report):
    text = (report[0] / "results.md").read_text()
    smoke = _markdown_section(text, "digits → digits · preset smoke · protocol unified · ε = 0.1 ")
    assert "smoke preset: a working demonstration, not a result to compare with papers" in smoke
    acl, rocl = _table_line(smoke, "acl"), _table_line(smoke, "rocl")
    # columns: Method, SLF SA, SLF PGD-20, SLF AA, SLF APGD-CE (measured for rocl: its own column), ALF ×4, AFF ×4
    # 2 seeds: mean ± half-width of the t-interval, t(0.975, df 1) = 12.706 × s (1.414) / √2 = 12.7
    assert acl[1] == "**91.0 ±12.7**" and acl[2] == "41.0 ±12.7"
    # 1 seed: Wilson over n_eval = 256; 45 % → 115/256, interval [38.95, 51.05] (by hand), larger side 6.05
    assert rocl[1] == "85.0 ±4.7" and rocl[2] == "**45.0 ±6.1**†"  # best per column in bold
    assert rocl[3].startswith("**47.0 ±") and rocl[3].endswith("**†")  # suspect marker
    assert rocl[4].startswith("**46.0 ±") and acl[4] == "–"
    assert acl[3] == "–" and acl[5:9] == ["–", "–", "–", "–"] and acl[9].startswith("**88.0 ±")
    assert "±: half-width of the 95 % interval (the larger side)" in smoke
    assert "Student-t interval of the mean over seeds" in smoke and "Wilson score interval" in smoke
    assert "† rocl SLF PGD-20, AA: suspect:aa>pgd20" in smoke
    assert "43.50" not in text  # best-epoch value not mixed in
    assert "ε = 0.05" in text and "ε = 8/255" in text  # every table states its ε


def test_best_epoch_table_is_separate(report):
    text = (report[0] / "results_best_epoch.md").read_text()
    assert "Best-on-test epoch" in text and "not the result" in text
    assert _table_line(_markdown_section(text, "Best-on-test"), "acl")[2].startswith("**43.5 ±")


def test_csv_and_latex_outputs_parse(report):
    rows = _read_csv(report[0] / "results.csv")
    key = ("acl", "SLF", "clean", "0.1")
    cell = next(r for r in rows if (r["method"], r["scheme"], r["attack"], r["epsilon"]) == key)
    assert float(cell["mean"]) == 91.0 and abs(float(cell["std"]) - 1.4142) < 1e-3 and cell["n"] == "2"
    # the t-interval's bounds (91 ± 12.706), its name, and each seed's value for the reader
    assert abs(float(cell["low"]) - 78.2938) < 1e-3 and abs(float(cell["high"]) - 103.7062) < 1e-3
    assert cell["interval"] == "t" and cell["seeds"] == "0;1" and cell["values"] == "90;92" and cell["n_eval"] == "256"
    missing = next(r for r in rows if (r["method"], r["scheme"], r["attack"]) == ("acl", "ALF", "clean"))
    assert missing["mean"] == "" and missing["n"] == "0"
    tex = (report[0] / "results.tex").read_text()
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 3
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 3
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\textbf{45.0 $\\pm$6.1}" in tex
    assert "91.0 $\\pm$12.7" in tex and "$^\\dagger$" in tex and "$\\epsilon$ = 0.1" in tex


def test_plots_are_written(report):
    figures = report[0] / "figures"
    for prefix in ("tradeoff_", "bars_", "loss_", "epsilon_"):
        pngs = sorted(figures.glob(f"{prefix}*.png"))
        assert pngs, prefix
        for png in pngs:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            pdf = png.with_name(png.name[:-4] + ".pdf")
            assert pdf.read_bytes()[:5] == b"%PDF-"
    assert (figures / "loss_digits-digits_smoke.png").exists()
    assert (figures / "epsilon_digits-digits_smoke.png").exists()


def test_index_links_every_file_and_notes_skips(report):
    reports_dir, written = report
    index = (reports_dir / "index.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", index))
    on_disk = {p.relative_to(reports_dir).as_posix() for p in reports_dir.rglob("*") if p.is_file()} - {"index.md"}
    assert links == on_disk and all((reports_dir / link).is_file() for link in links)
    assert {Path(p) for p in written} == {reports_dir / link for link in links} | {reports_dir / "index.md"}
    # provenance once, for the whole store; each method's config hashes in method order
    assert index.count("`0.1.0+abc`") == 1 and "- presets: `paper`, `smoke`" in index
    assert "simclr `hash-a`; acl `hash-a`; rocl `hash-b`; advcl `hash-c`" in index and index.count("hash-b") == 1
    # a table of contents: one line per artifact, its title linking the main file, other formats after it
    entries = [line for line in index.splitlines() if line.startswith("- [")]
    assert len(entries) == len({Path(link).with_suffix("") for link in links})  # md/csv/tex, png/pdf: one line
    assert "- [Results (last-epoch accuracy)](results.md) · [csv](results.csv) · [tex](results.tex)" in entries
    assert "- Pretraining loss — cifar10 → cifar10 · preset paper: no pretrain_history.csv" in index  # skipped
    assert not list(reports_dir.rglob("*.tmp"))


def test_paper_table_reference_and_delta(report):
    text = (report[0] / "paper_table1.md").read_text()
    section = text.split("## CIFAR-10 (cifar10) · preset paper")[1].split("## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith("| AdvCL |"))
    ours, reference, delta = ([c.strip() for c in line.strip("|").split("|")] for line in lines[start : start + 3])
    assert [cell.split(" ±")[0] for cell in ours[2:5]] == ["81.8", "50.0", "44.0"]
    assert reference[1] == "reference" and reference[2].startswith("80.85 [")  # author-quoted preferred
    assert reference[4].startswith("43.18 [")
    assert delta[2:5] == ["+1.00", "-0.45", "+0.82"] and delta[5] == "–"
    assert "AdvCL-IPHN" in section and "RoCL-IP" in section and "also 82.36" in section
    assert "smoke preset" not in section and "https://example.org/advcl" in text
    rows = _read_csv(report[0] / "paper_table1.csv")
    cell = next(r for r in rows if (r["method"], r["scheme"], r["attack"]) == ("advcl", "SLF", "clean"))
    assert float(cell["delta"]) == pytest.approx(1.0) and cell["reference_file"] == "author_quoted.csv"
    cifar100 = text.split("## CIFAR-100")[1]
    assert "(no results of ours)" in cifar100 and "42.93 [" in cifar100
    assert "\\begin{tabular}" in (report[0] / "paper_table1.tex").read_text()


def test_paper_table_smoke_banner(tmp_path):
    rows = load(_write_store(tmp_path, [_row("a", "rocl", "SLF", "clean", 70.0, dataset="cifar10")]))
    paths = write_paper_tables(rows, _write_reference(tmp_path / "ref"), tmp_path / "out")
    text = paths[0].read_text()
    assert "smoke preset: a working demonstration, not a result to compare with papers" in text


def test_repository_reference_files():
    rows = load_reference(REPO_REFERENCE)
    assert rows and all(row["source"] for row in rows)
    quoted = {(r["method"], r["attack"]): r["value"] for r in rows if r["file"] == "author_quoted.csv"}
    assert quoted == {
        ("rocl", "clean"): 83.71,
        ("rocl", "pgd20"): 40.27,
        ("advcl", "clean"): 80.85,
        ("advcl", "pgd20"): 50.45,
    }
    board = [r for r in rows if r["file"] == "robustssl_leaderboard.csv"]
    ainfonce = {
        (r["dataset"], r["scheme"], r["attack"]): r["value"]
        for r in board
        if r["method"] == UNSPECIFIED_AINFONCE and r["dataset"] == r["eval_dataset"]
    }
    assert ainfonce[("cifar10", "SLF", "autoattack")] == 42.72 and ainfonce[("cifar100", "AFF", "clean")] == 58.08
    assert not any(r["method"].startswith(("advcl-", "rocl-")) for r in board)


def test_convert_leaderboard(tmp_path):
    source = tmp_path / "wide.csv"
    source.write_text(
        "pretrain,downstream,mode,paper,venue,comment,"
        "ra_vanilla,ca_vanilla,sa_vanilla,ra_autolora,ca_autolora,sa_autolora\n"
        "cifar10,cifar10,SLF,Rethinking the Effect of Data Augmentation in Adversarial Contrastive Learning,ICLR 2023,"
        "Using post-processing,46.54,71.96,79.82,45.07,73.56,81.75\n"
        "cifar10,cifar10,SLF,Adversarial Self-Supervised Contrastive Learning,NeurIPS 2020,,"
        "26.12,0,77.90,37.92,72.65,80.65\n"
    )
    run = subprocess.run(
        [sys.executable, str(CONVERTER), str(source), str(tmp_path / "long.csv")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )  # as documented, from any directory
    assert run.returncode == 0 and run.stdout == f"wrote {tmp_path / 'long.csv'}\n", run.stderr
    rows = _read_csv(tmp_path / "long.csv")
    assert {(r["method"], r["scheme"], r["attack"], r["value"]) for r in rows} >= {
        ("dynacl++", "SLF", "autoattack", "46.54"),
        ("dynacl++", "SLF", "clean", "79.82"),
        ("rocl", "SLF", "clean", "77.9"),
        ("rocl", "SLF-autolora", "autoattack", "37.92"),
    }
    assert not any(r["method"] == "rocl" and r["scheme"] == "SLF" and r["attack"] == "common-corruptions" for r in rows)
    assert all("robustssl.github.io" in r["source"] for r in rows)
    assert [r["note"] for r in rows if r["value"] == "37.92"][0].endswith("treat with care")


def test_convert_leaderboard_refuses_an_unknown_paper_and_a_wrong_format(tmp_path):
    source = tmp_path / "wide.csv"
    source.write_text(
        "pretrain,downstream,mode,paper,comment,ra_vanilla,ca_vanilla,sa_vanilla\n"
        "cifar10,cifar10,SLF,A Paper Nobody Mapped,,1,2,3\n"
    )
    run = subprocess.run(
        [sys.executable, str(CONVERTER), str(source), str(tmp_path / "long.csv")], capture_output=True, text=True
    )
    assert run.returncode == 2 and "'A Paper Nobody Mapped' has no method mapping" in run.stderr
    source.write_text(
        "pretrain,downstream,mode,paper,comment\ncifar10,cifar10,SLF,Decoupled Adversarial Contrastive Learning,\n"
    )
    run = subprocess.run(
        [sys.executable, str(CONVERTER), str(source), str(tmp_path / "long.csv")], capture_output=True, text=True
    )
    assert run.returncode == 2 and "lacks the column 'sa_vanilla'" in run.stderr  # sa is read first
    assert not (tmp_path / "long.csv").exists()


def test_configurations_are_never_averaged_together(tmp_path):
    """Same seed, different configs: one row each; seeds of one config: mean ± std."""
    rows = [
        _row("a0", "acl", "SLF", "clean", 80.0, config_hash="h1"),
        _row("a1", "acl", "SLF", "clean", 60.0, config_hash="h2"),
        _row("a2", "acl", "SLF", "clean", 64.0, config_hash="h2", seed=1),
        _row("r0", "rocl", "SLF", "clean", 70.0, config_hash="h3"),
    ]
    write_reports(_write_store(tmp_path, rows), tmp_path / "rep", tmp_path / "results" / "runs", None, figures=False)
    section = _markdown_section((tmp_path / "rep" / "results.md").read_text(), "digits")
    assert _table_line(section, "acl [h1]")[1].startswith("**80.0 ±")
    assert _table_line(section, "acl [h2]")[1] == "62.0 ±25.4"  # t(0.975, 1) 12.706 × 2.83 / √2
    assert _table_line(section, "rocl")[1].startswith("70.0 ±")  # one configuration: plain method name


def test_single_run_cells_carry_the_wilson_interval_of_their_test_images(tmp_path):
    """50 % of 100 images: the Wilson 95 % interval is [40.38, 59.62] (textbook value, e.g. Brown, Cai &
    DasGupta 2001); unknown n_eval: no interval, and the note says so."""
    rows = [
        {**_row("a0", "acl", "SLF", "clean", 50.0), "n_eval": 100},
        {**_row("r0", "rocl", "SLF", "clean", 70.0), "n_eval": ""},
    ]
    write_reports(_write_store(tmp_path, rows), tmp_path / "rep", tmp_path / "results" / "runs", None, figures=False)
    section = _markdown_section((tmp_path / "rep" / "results.md").read_text(), "digits")
    assert _table_line(section, "acl")[1] == "50.0 ±9.6" and _table_line(section, "rocl")[1] == "**70.0**"
    cell = next(r for r in _read_csv(tmp_path / "rep" / "results.csv") if r["method"] == "acl" and r["mean"])
    assert cell["interval"] == "wilson" and abs(float(cell["low"]) - 40.383) < 1e-3
    assert abs(float(cell["high"]) - 59.617) < 1e-3


@pytest.mark.e2e
def test_supervised_at_rows_get_their_own_columns(tmp_path):
    rows = [
        _row("a0", "acl", "SLF", "clean", 80.0),
        _row("rb", "robustbench:Carmon2019", "AT", "clean", 89.7),
        _row("rb", "robustbench:Carmon2019", "AT", "pgd20", 62.0),
    ]
    write_reports(_write_store(tmp_path, rows), tmp_path / "rep", tmp_path / "results" / "runs", None, figures=False)
    text = (tmp_path / "rep" / "results.md").read_text()
    assert "| AT SA | AT PGD-20 | AT AA |" in text
    assert _table_line(_markdown_section(text, "digits"), "robustbench:Carmon2019")[10:12] == [
        "**89.7 ±4.2**",
        "**62.0 ±6.0**",
    ]


@pytest.mark.e2e
def test_sanity_report_lists_passed_and_failed_checks(tmp_path):
    results_csv = _write_store(tmp_path, _rows())
    run_dir = tmp_path / "results" / "runs" / "acl-s0"
    (run_dir / "sanity_SLF.json").write_text(
        json.dumps(
            {
                "order": {"passed": True, "detail": "clean 90.00 %, pgd20 40.00 %"},
                "eps0": {"passed": False, "detail": "ε=0 88.00 %, clean 90.00 %"},
            }
        )
    )
    written = write_reports(results_csv, tmp_path / "rep", tmp_path / "results" / "runs", None, figures=False)
    text = (tmp_path / "rep" / "sanity.md").read_text()
    assert "2 checks over 1 evaluations; 1 failed" in text
    assert "| acl | SLF | eps0 | **NO** | ε=0 88.00 %, clean 90.00 % |" in text
    assert "| acl | SLF | order | yes |" in text
    assert tmp_path / "rep" / "sanity.csv" in written and "sanity.md" in (tmp_path / "rep" / "index.md").read_text()


def test_epsilon_curve_uses_the_curve_rows_of_selected_methods(tmp_path):
    rows = load(
        _write_store(
            tmp_path,
            _rows()
            + [
                _row(
                    "rocl-s0",
                    "rocl",
                    "SLF",
                    "pgd20",
                    50.0,
                    metric="accuracy_vs_epsilon",
                    epsilon=0.02,
                    config_hash="hash-b",
                ),
                _row(
                    "rocl-s0",
                    "rocl",
                    "SLF",
                    "pgd20",
                    30.0,
                    metric="accuracy_vs_epsilon",
                    epsilon=0.1,
                    config_hash="hash-b",
                ),
            ],
        )
    )
    series = epsilon_series(rows)[("digits", "digits", "smoke", "unified")]
    # acl-s0's main PGD-20 row (ε 0.1) is its curve's point there; acl-s1 has no curve rows
    assert [(eps, cell.mean) for eps, cell in series[("acl", "SLF")]] == [(0.05, 61.0), (0.1, 40.0)]
    assert set(epsilon_series(rows, ["rocl"])[("digits", "digits", "smoke", "unified")]) == {("rocl", "SLF")}


@pytest.mark.e2e
def test_sanity_report_lists_methods_in_the_given_order(tmp_path):
    results_csv = _write_store(tmp_path, _rows())
    for run_id in ("acl-s0", "simclr-s0"):
        write_sanity(tmp_path / "results" / "runs", run_id, {"order": {"passed": True, "detail": "ok"}})
    write_reports(
        results_csv, tmp_path / "rep", tmp_path / "results" / "runs", None, method_order=GOLDEN_ORDER, figures=False
    )
    text = (tmp_path / "rep" / "sanity.md").read_text()
    assert text.index("| simclr |") < text.index("| acl |")  # the caller's order, not alphabetical
    write_reports(results_csv, tmp_path / "rep", tmp_path / "results" / "runs", None, figures=False)
    text = (tmp_path / "rep" / "sanity.md").read_text()
    assert text.index("| acl |") < text.index("| simclr |")  # no order given: alphabetical


@pytest.mark.e2e
def test_bench_report_orders_methods_as_the_registry_plugins_included(tmp_path):
    """`bench report` passes the registry's order: anchors first, each base then its variants, plugins last."""
    from bench.cli.app import main
    from bench.methodkit import registry
    from bench.methodkit.method import Method
    from bench.methodkit.spec import VariantSpec

    methods = ["aaa-plugin", "rocl-hn", "advcl", "acl-ip", "acl", "simclr"]
    _write_store(tmp_path, [_row(f"{m}-s0", m, "SLF", "clean", 50.0 + i) for i, m in enumerate(methods)])
    registry.available()  # built-in methods first, as discovery loads them before entry-point plugins
    registry.register("aaa-plugin")(type("Plugin", (Method,), {"variant": VariantSpec(adversarial_views=True)}))
    try:
        assert (
            main(
                [
                    "report",
                    "--results-dir",
                    str(tmp_path / "results"),
                    "--reports-dir",
                    str(tmp_path / "rep"),
                    "--quiet",
                ]
            )
            == 0
        )
    finally:
        registry.unregister("aaa-plugin")
    section = _markdown_section((tmp_path / "rep" / "results.md").read_text(), "digits")
    listed = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    assert listed == ["simclr", "acl", "acl-ip", "advcl", "rocl-hn", "aaa-plugin"]


def test_selections_that_come_out_empty_stay_empty(tmp_path):
    """Only clean rows without ε, no ε-curve rows: one table of unspecified ε and no ε figure (an empty
    selection must not take the index of a longer column assigned to it)."""
    rows = [_row("a0", "acl", "SLF", "clean", 70.0, epsilon=""), _row("r0", "rocl", "ALF", "clean", 60.0, epsilon="")]
    write_reports(_write_store(tmp_path, rows), tmp_path / "rep", tmp_path / "results" / "runs", None)
    text = (tmp_path / "rep" / "results.md").read_text()
    assert text.count("### ") == 1 and "ε = unspecified" in text
    assert _table_line(_markdown_section(text, "digits"), "rocl")[4].startswith("**60.0 ±")
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "Accuracy vs ε (PGD-20): no method has PGD-20 rows at ≥ 2 ε values" in index
    assert (
        "vs compute — digits → digits · preset smoke · protocol unified · ε = unspecified (L∞): no PGD-20 or AA rows"
    ) in index
    from report_stores import edge_rows

    series = epsilon_series(load(_write_store(tmp_path / "edge", edge_rows())))
    assert series == {}  # PGD-20 at two budgets, but no ε-curve rows: not a curve


def test_loss_history_empty_or_malformed(tmp_path):
    from bench.products.report.curves import read_history

    (tmp_path / "empty.csv").write_text("")
    assert read_history(tmp_path / "empty.csv").empty
    (tmp_path / "bad.csv").write_text("epoch,step,loss\n0,0,1.0\n0,1,2.0,9,9\n")
    with pytest.raises(ValueError, match=r"bad\.csv: not a loss history"):
        read_history(tmp_path / "bad.csv")
    (tmp_path / "ok.csv").write_text("epoch,step,loss,note\n0,0,1.5,x\n0,1,,y\n")
    history = read_history(tmp_path / "ok.csv")
    assert list(history.columns) == ["epoch", "step", "loss"] and history["loss"].isna().tolist() == [False, True]


@pytest.mark.e2e
def test_only_method_level_tests_mark_variants_and_single_runs_get_no_method_verdict(tmp_path):
    """Over 3 shared seeds without records: the method-level test is the paired t-test (df 2, closed form
    p = 1 − t/√(t² + 2)) and marks; single runs: exact McNemar on their per-image records, labelled as a
    comparison of two classifiers, with no mark; neither defined: no mark, empty CSV columns."""
    import numpy as np

    from bench.store.records import write_record

    seeds = [
        _row(f"{method}-s{seed}", method, "SLF", "clean", value, seed=seed)
        for method, values in (("acl", (50, 52, 54)), ("acl-ip", (60, 61, 65)), ("acl-hn", (51, 53, 52)))
        for seed, value in enumerate(values)
    ]
    single = [
        _row("rocl-s0", "rocl", "SLF", "clean", 55.0, config_hash="hash-b"),
        _row("rocl-ip-s0", "rocl-ip", "SLF", "clean", 65.0, config_hash="hash-b"),
        _row("rocl-s0", "rocl", "SLF", "pgd20", 30.0, config_hash="hash-b"),
        _row("rocl-ip-s0", "rocl-ip", "SLF", "pgd20", 40.0, config_hash="hash-b"),
    ]
    for row in single:
        row["n_eval"] = 200
    results_csv = _write_store(tmp_path, seeds + single)
    runs = tmp_path / "results" / "runs"
    base = np.array([True] * 100 + [False] * 30 + [True] * 10 + [False] * 60)  # 55 % of 200
    variant = np.array([True] * 100 + [True] * 30 + [False] * 10 + [False] * 60)  # 65 %: 30 vs 10 discordant
    for run_id, correct in (("rocl-s0", base), ("rocl-ip-s0", variant)):  # records hold clean only
        (runs / run_id).mkdir(parents=True, exist_ok=True)
        write_record(runs / run_id / "correct_SLF.npz", np.arange(200), {"clean": correct})
    write_reports(results_csv, tmp_path / "rep", runs, None, method_order=GOLDEN_ORDER, figures=False)
    section = _markdown_section((tmp_path / "rep" / "results.md").read_text(), "digits")
    assert _table_line(section, "acl-ip")[1] == "62.0 ±6.6▲"  # t(0.975, 2) 4.303 × 2.646 / √3 = 6.57
    assert _table_line(section, "acl-hn")[1] == "52.0 ±2.5" and _table_line(section, "acl")[1] == "52.0 ±5.0"
    assert "▲" not in _table_line(section, "rocl-ip")[1]  # p = 2e-6 on the images: classifiers, not the method
    assert "▲/▼: method verdict: the variant method is significantly better/worse" in section
    assert "single runs (one seed): no method verdict and no mark" in section
    rows = {(r["method"], r["attack"]): r for r in _read_csv(tmp_path / "rep" / "results.csv") if r["scheme"] == "SLF"}
    t = 10 / (1 / math.sqrt(3))
    assert abs(float(rows["acl-ip", "clean"]["vs_base_p"]) - (1 - t / math.sqrt(t * t + 2))) < 1e-4
    assert rows["acl-ip", "clean"]["vs_base_test"] == "paired-t"
    assert rows["acl-ip", "clean"]["vs_base_level"] == "method (3 seeds)"
    assert rows["acl-hn", "clean"]["vs_base_verdict"] == "no detectable difference"
    mcnemar = 2 * sum(math.comb(40, k) for k in range(11)) / 2**40
    assert abs(float(rows["rocl-ip", "clean"]["vs_base_p"]) - mcnemar) < 1e-6
    assert rows["rocl-ip", "clean"]["vs_base_test"] == "mcnemar-exact"
    assert rows["rocl-ip", "clean"]["vs_base_level"] == "classifiers (one seed)"
    assert rows["rocl-ip", "clean"]["vs_base_verdict"] == "classifiers differ"
    assert rows["rocl-ip", "pgd20"]["vs_base_p"] == "" and rows["acl", "clean"]["vs_base_p"] == ""  # not defined
    tex = (tmp_path / "rep" / "results.tex").read_text()
    assert "$^\\uparrow$" in tex and "▲" not in tex
    assert "$\\uparrow$/$\\downarrow$: the variant method is significantly better/worse than its base method" in tex
    help_md = (tmp_path / "rep" / "variant_help.md").read_text()
    assert "| acl-ip | acl | SLF | clean | method (3 seeds) | – | +10.0 [" in help_md
    assert "| paired-t | variant better |" in help_md
    assert "| acl-hn | acl | SLF | clean | method (3 seeds) | – | +0.0 [" in help_md
    assert "| rocl-ip | rocl | SLF | clean | classifiers (one seed) | 200 | +10.0 [" in help_md
    assert "| mcnemar-exact | classifiers differ |" in help_md and "variant better | 20.0" not in help_md
    # 40 of 200 images discordant: ψ 20 %, and the MDD the exact McNemar test has at that n and ψ
    detectable = 100 * minimum_detectable_difference(200, 0.2)
    # one seed: the seed spread is unknown; image noise alone, SD √(1e4 (0.2 − 0.1²) / 199) = 3.09 points, already
    # needs 11 seeds for 3 points at 80 % (noncentral t: power 0.78 at 10, 0.83 at 11)
    needs = "needs ≥ 2 seeds to estimate (≥ 11 from image noise alone)"
    assert f"| classifiers differ | 20.0 | {detectable:.1f} | – | {needs} |" in help_md
    assert 5 < detectable < 15 and "the default one-seed run gives none" in help_md
    assert len(_read_csv(tmp_path / "rep" / "variant_help.csv")) == 3


@pytest.mark.e2e
def test_a_single_seed_report_has_no_method_verdict(tmp_path):
    """One seed per method (the default `bench run`), records stored: no ▲/▼ anywhere, the caption says why."""
    import numpy as np

    from bench.store.records import write_record

    rows = [_row("acl-s0", "acl", "SLF", "pgd20", 30.0), _row("acl-ip-s0", "acl-ip", "SLF", "pgd20", 45.0)]
    runs = tmp_path / "results" / "runs"
    results_csv = _write_store(tmp_path, rows)
    for run_id, share in (("acl-s0", 0.30), ("acl-ip-s0", 0.45)):  # 15 points apart: McNemar rejects
        (runs / run_id).mkdir(parents=True, exist_ok=True)
        write_record(runs / run_id / "correct_SLF.npz", np.arange(200), {"pgd20": np.arange(200) < 200 * share})
    write_reports(results_csv, tmp_path / "rep", runs, None, method_order=GOLDEN_ORDER, figures=False)
    section = _markdown_section((tmp_path / "rep" / "results.md").read_text(), "digits")
    assert "▲" not in section and "▼" not in section  # neither in a cell nor in a note
    tex = (tmp_path / "rep" / "results.tex").read_text()
    assert "uparrow" not in tex and "downarrow" not in tex
    help_md = (tmp_path / "rep" / "variant_help.md").read_text()
    help_lines = [line for line in help_md.splitlines() if "| acl-ip |" in line]
    assert len(help_lines) == 1 and "| classifiers differ |" in help_lines[0] and "variant better" not in help_lines[0]
    verdicts = {row["vs_base_verdict"] for row in _read_csv(tmp_path / "rep" / "results.csv")}
    assert verdicts == {"", "classifiers differ"}
    assert "No method verdict: one seed per method" in (tmp_path / "rep" / "results.tex").read_text()
    (help_row,) = _read_csv(tmp_path / "rep" / "variant_help.csv")
    assert help_row["level"] == "classifiers (one seed)" and help_row["verdict"] == "classifiers differ"
    assert help_row["seeds"] == "1" and help_row["seeds_needed"] == "" and int(help_row["seeds_needed_at_least"]) >= 2


@pytest.mark.e2e
def test_multi_seed_verdicts_come_from_the_method_level_test_on_the_records(tmp_path):
    """3 seeds with per-image records: the report's verdict is compare_methods' (HKSJ) on those records."""
    import numpy as np

    from bench.products.method_level import compare_methods
    from bench.store.records import write_record

    generator = np.random.default_rng(0)
    runs, rows, arrays = tmp_path / "results" / "runs", [], {}
    for method, accuracy in (("acl", 0.40), ("acl-ip", 0.50)):
        for seed in range(3):
            correct = generator.random(300) < accuracy + 0.02 * seed
            arrays[method, seed] = correct
            rows.append(_row(f"{method}-s{seed}", method, "SLF", "pgd20", 100 * correct.mean(), seed=seed))
            (runs / f"{method}-s{seed}").mkdir(parents=True, exist_ok=True)
            write_record(runs / f"{method}-s{seed}" / "correct_SLF.npz", np.arange(300), {"pgd20": correct})
    write_reports(_write_store(tmp_path, rows), tmp_path / "rep", runs, None, method_order=GOLDEN_ORDER, figures=False)
    expected = compare_methods([arrays["acl", s] for s in range(3)], [arrays["acl-ip", s] for s in range(3)])
    (help_row,) = _read_csv(tmp_path / "rep" / "variant_help.csv")
    assert help_row["level"] == "method (3 seeds)" and help_row["test"] == "hksj-random-effects"
    assert help_row["n"] == "300" and help_row["seeds"] == "3"
    assert float(help_row["difference"]) == pytest.approx(expected.difference, abs=1e-4)
    assert float(help_row["p_value"]) == pytest.approx(expected.p_value, rel=1e-3)
    assert help_row["verdict"] == expected.verdict
    assert help_row["seeds_needed"] == str(expected.seeds_needed())
    assert float(help_row["between_seed_sd"]) == pytest.approx(expected.between_seed_sd, abs=0.01)
    section = _markdown_section((tmp_path / "rep" / "results.md").read_text(), "digits")
    assert expected.verdict == "variant better" and _table_line(section, "acl-ip")[2].endswith("▲")


@pytest.mark.e2e
def test_corruption_table_has_severity_means_per_method_and_scheme(tmp_path):
    rows = [_row("a0", "acl", "SLF", "clean", 80.0)]
    for seed, offset in ((0, 0.0), (1, 2.0)):
        rows += [
            _row(
                f"a{seed}",
                "acl",
                "SLF",
                f"corruption-mean:{s}",
                70.0 - 10 * s + offset,
                seed=seed,
                flags="regenerated;approximate",
            )
            for s in (1, 3)
        ]
        rows += [
            _row(f"a{seed}", "acl", "SLF", "corruption-mean", 40.0 + offset, seed=seed, flags="regenerated"),
            _row(f"a{seed}", "acl", "SLF", "corruption:fog:1", 99.0, seed=seed, flags="regenerated"),
        ]
    write_reports(_write_store(tmp_path, rows), tmp_path / "rep", tmp_path / "results" / "runs", None)
    text = (tmp_path / "rep" / "corruptions.md").read_text()
    assert "| Method | Scheme | SA | s1 | s3 | mean | n | Source |" in text  # clean accuracy beside them
    assert "| acl | SLF | 80.0 | 61.0 | 41.0 | 41.0 | 2 | regenerated+approximate |" in text  # means over 2 seeds
    figures = list((tmp_path / "rep" / "figures").glob("corruptions_*.png"))
    assert len(figures) == 1 and figures[0].name in (tmp_path / "rep" / "index.md").read_text()
    results_md = (tmp_path / "rep" / "results.md").read_text()
    assert "common corruptions (corruptions.md)" in results_md and "corruption:fog:1" not in results_md
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "(corruptions.md)" in index
