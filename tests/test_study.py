"""``bench study`` (bench.products.study, bench.products.study_report, bench.cli.study).

The training is replaced by a fake runner that writes planted per-image records into the real store
layout (``RunDir.correct``, the completion mark) for every run of a look's real plan, and skips runs
that are complete, as the pipeline does; so the plan, the reuse of stored seeds, the looks, the
decisions and the report are the real ones. One tiny real end-to-end study runs the pipeline.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bench.cli.app import main
from bench.errors import ConfigError
from bench.products import method_level
from bench.products import study as study_module
from bench.products.sequential import BETTER, EQUIVALENT, UNDECIDED
from bench.products.study import new_study, run_study
from bench.products.study_report import write_study
from bench.runs.pipeline import RunOutcome
from bench.runs.plan import RunRequest
from bench.store.records import write_record
from bench.store.results import ResultsStore

IMAGES = 400


class FakeRunner:
    """Writes, per run, a record whose accuracy is ``accuracy[method](seed)`` (exactly, on IMAGES images)."""

    def __init__(self, accuracy):
        self.accuracy = accuracy
        self.trained: list[str] = []

    def __call__(self, plan):
        store, outcomes = ResultsStore(plan.results_dir), []
        for run in plan.runs:
            directory = store.run(run.run_id)
            if directory.is_complete():
                outcomes.append(RunOutcome(run.run_id, run.method, "skipped"))
                continue
            rng = np.random.default_rng(run.config.seed)
            correct = np.zeros(IMAGES, bool)
            correct[rng.permutation(IMAGES)[: round(IMAGES * self.accuracy[run.method](run.config.seed) / 100)]] = True
            directory.create()
            for scheme in run.config.finetune.schemes:
                attacks = {attack: correct for attack in run.config.evaluate.attacks}
                write_record(directory.correct(scheme), np.arange(IMAGES), attacks, {"epsilon": 0.03})
            directory.mark_complete([], {"run_id": run.run_id})
            self.trained.append(run.run_id)
            outcomes.append(RunOutcome(run.run_id, run.method, "completed"))
        return outcomes


def _request(tmp_path, **overrides) -> RunRequest:
    base = {
        "results_dir": str(tmp_path / "results"),
        "reports_dir": str(tmp_path / "reports"),
        "finetune.schemes": "SLF",
        "evaluate.attacks": "pgd20",
    }
    return RunRequest(preset="smoke", overrides={**base, **overrides}, methods=("acl", "acl-ip"))


# Seed spreads planted per method: acl-ip 10 points above acl with a 1-point wobble; acl-hn the same as acl.
SPREAD = [0.0, 1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.25, -0.25, 0.75]
ACCURACY = {
    "acl": lambda seed: 40 + 4 * SPREAD[seed],
    "acl-ip": lambda seed: 50 + 4 * SPREAD[seed] + SPREAD[(seed + 3) % 10],
    "acl-hn": lambda seed: 40 + 4 * SPREAD[seed] + 0.5 * SPREAD[(seed + 1) % 10],
    "rocl": lambda seed: 40 + 4 * SPREAD[seed] + 12 * SPREAD[(seed + 2) % 10],
}


def test_planted_records_stop_for_the_right_reasons(tmp_path):
    """+10 points with a small wobble: better; a tiny wobble around 0: no difference that matters; a large
    wobble around 0 (rocl): undecided when the budget is spent. Each comparison stops at its own look."""
    request = _request(tmp_path)
    study = new_study(request, "acl", ["acl-ip", "acl-hn", "rocl"], max_seeds=7, first=3, step=2, difference=3.0)
    runner = FakeRunner(ACCURACY)
    run_study(study, request, runner=runner)
    decided = {track.variant: (track.decision, track.seeds) for track in study.tracks}
    assert decided["acl-ip"][0] == BETTER
    assert decided["acl-hn"][0] == EQUIVALENT
    assert decided["rocl"] == (UNDECIDED, 7)
    assert study.design.alpha == pytest.approx(0.05 / 3)  # Bonferroni over the three comparisons
    for track in study.tracks:  # the interval at each look has the look's level
        assert [look.seeds for look in track.looks] == list(study.design.looks[: len(track.looks)])
    # decided comparisons stop training their variant: acl-ip's seeds beyond its deciding look are never run
    seeds_of = {name: sum(run_id.startswith(name + "-smoke") for run_id in runner.trained) for name in ACCURACY}
    assert seeds_of["acl-ip"] == decided["acl-ip"][1]
    assert seeds_of["acl"] == seeds_of["rocl"] == 7


def test_resume_reuses_every_stored_seed(tmp_path):
    """A second invocation trains nothing and decides the same; a study killed after its first look
    (simulated by a smaller budget run first) reuses those seeds and trains only the new ones."""
    request = _request(tmp_path)
    first = FakeRunner(ACCURACY)
    earlier = run_study(new_study(request, "acl", ["rocl"], max_seeds=3, first=3), request, runner=first)
    assert len(first.trained) == 6
    second = FakeRunner(ACCURACY)
    later = run_study(new_study(request, "acl", ["rocl"], max_seeds=5, first=3, step=2), request, runner=second)
    assert len(second.trained) == 4  # seeds 3 and 4 of both; seeds 0-2 reused
    third = FakeRunner(ACCURACY)
    again = run_study(new_study(request, "acl", ["rocl"], max_seeds=5, first=3, step=2), request, runner=third)
    assert third.trained == []
    assert [t.looks for t in again.tracks] == [t.looks for t in later.tracks]
    assert earlier.tracks[0].looks[0].seeds == 3


def test_a_failed_run_stops_the_study_with_one_line(tmp_path):
    request = _request(tmp_path)

    def failing(plan):
        return [RunOutcome(run.run_id, run.method, "failed", "boom") for run in plan.runs]

    with pytest.raises(study_module.StudyError, match=r"failed: boom; 6 run\(s\) failed"):
        run_study(new_study(request, "acl", ["acl-ip"]), request, runner=failing)


@pytest.mark.e2e
def test_report_files(tmp_path):
    request = _request(tmp_path)
    study = run_study(new_study(request, "acl", ["acl-ip", "rocl"], max_seeds=5), request, runner=FakeRunner(ACCURACY))
    written = write_study(study, tmp_path / "reports")
    assert [path.name for path in written] == ["study.md", "study.csv", "study.png", "study.pdf"]
    text = written[0].read_text()
    assert "| acl-ip | SLF | pgd20 | variant better | 3 |" in text
    assert "seed budget spent" in text and "![interval narrowing" in text
    rows = list(csv.DictReader(written[1].open()))
    assert [row["variant"] for row in rows] == ["acl-ip", "rocl", "rocl"]
    assert rows[0]["decision"] == BETTER and rows[1]["decision"] == "" and rows[2]["reason"] == "seed budget spent"
    assert sum(float(row["alpha"]) for row in rows[1:]) == pytest.approx(0.025, rel=1e-4)
    # --no-figures: study.md says so, and an earlier look's figure, which it no longer shows, is gone
    assert [path.name for path in write_study(study, tmp_path / "reports", figures=False)] == ["study.md", "study.csv"]
    assert "Figure: not drawn (--no-figures)." in written[0].read_text()
    assert not list((tmp_path / "reports").glob("study.p*"))


def test_dry_run_json_prints_the_design_and_the_first_look(tmp_path, capsys):
    status = main(
        ["study", "acl", "acl-ip", "--schemes", "SLF", "--attacks", "pgd20", "--dry-run", "--json"]
        + ["--results-dir", str(tmp_path / "r"), "--quiet"]
    )
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    design = lines[0]["study"]["design"]
    assert design["looks"] == [3, 5, 7, 10] and sum(design["alpha_per_look"]) == pytest.approx(0.05, abs=1e-6)
    runs = lines[1:]
    assert sorted((run["method"], run["seed"]) for run in runs) == [(m, s) for m in ("acl", "acl-ip") for s in range(3)]
    assert {run["scheme"] for run in runs} == {"SLF"}
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-seeds", "2"], "--max-seeds=2 is invalid"),
        (["--max-seeds", "ten"], "--max-seeds='ten' is invalid"),
        (["--difference", "-1"], "--difference=-1.0 is invalid"),
        (["--alpha", "0"], "--alpha=0.0 is invalid"),
        (["--seed", "4"], "--seed is invalid for bench study"),
        (["--json"], "--json is invalid without --dry-run"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    dry_run = [] if flags == ["--json"] else ["--dry-run"]  # --json alone is the error; the others never train
    status = main(["study", "acl", "acl-ip", *dry_run, "--results-dir", str(tmp_path), *flags])
    error = capsys.readouterr().err
    assert status == 2 and message in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("variants", "message"),
    [(["acl"], "variant 'acl' is invalid"), (["acl-ip", "acl-ip"], "variant 'acl-ip' is invalid"), (["nope"], "nope")],
)
def test_bad_methods(tmp_path, variants, message):
    with pytest.raises(ConfigError, match=message):
        new_study(_request(tmp_path), "acl", variants)


def test_each_look_tests_at_its_own_level(tmp_path):
    """The comparison at look j is asked for its interval at confidence 1 − α_j (the spent increment)."""
    request, asked = _request(tmp_path), []
    compare = method_level.compare_methods

    def spy(base, variant, alpha, confidence):
        asked.append((len(base), alpha, confidence))
        return compare(base, variant, alpha=alpha, confidence=confidence)

    study = run_study(new_study(request, "acl", ["rocl"], max_seeds=5), request, FakeRunner(ACCURACY), compare=spy)
    assert asked == [(k, a, pytest.approx(1 - a)) for k, a in zip(study.design.looks, study.design.alphas)]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_tiny_real_study_through_the_local_pool_and_the_sweep_s_stage_jobs(tmp_path, monkeypatch):
    """The real pipeline on TINY, one look each, two studies in one store:

    1. acl against acl-ip through the local pool (``--jobs 2``, worker processes): two seeds of each, 4 runs;
    2. acl against acl-hn with ``--launcher submitit-local``: each look's pending runs become ``bench sweep``'s
       stage jobs, run through the CLI's stage entry (here in this process, in submission order; submitit's own
       executor is tested in tests/test_sweep.py): acl-hn's two runs only, acl's are reused; the look is
       tested on what they stored;
    3. either study again trains nothing (no job, no done.json rewritten)."""
    from processes import jobs_in_this_process
    from tiny_run import TINY

    from bench.products.report.common import FIGURES_NOT_DRAWN
    from bench.runs import sweep

    submitted = []
    monkeypatch.setattr(sweep, "run_submitit_local", jobs_in_this_process(submitted))
    common = [*TINY, "--first-seeds", "2", "--max-seeds", "2", "--results-dir", str(tmp_path / "results")]
    common += ["--reports-dir", str(tmp_path / "reports")]
    pool = ["study", "acl", "acl-ip", *common, "--jobs", "2"]
    assert main(pool) == 0
    assert len(list((tmp_path / "results" / "runs").iterdir())) == 4
    rows = list(csv.DictReader((tmp_path / "reports" / "study.csv").open()))
    assert {(row["scheme"], row["attack"]) for row in rows} == {("SLF", "clean"), ("SLF", "pgd20")}
    assert all(row["decision"] for row in rows)  # one look: each comparison ends there
    assert f"Figure: {FIGURES_NOT_DRAWN}." in (tmp_path / "reports" / "study.md").read_text()  # TINY's --no-figures
    assert not list((tmp_path / "reports").glob("study.p*"))

    jobs = ["study", "acl", "acl-hn", *common, "--launcher", "submitit-local"]
    assert main(jobs) == 0
    assert [job.stage for job in submitted] == ["pretrain", "finetune"] * 2 + [
        "collect"
    ]  # acl-hn's two seeds, SLF, then the index
    rows = list(csv.DictReader((tmp_path / "reports" / "study.csv").open()))
    assert rows and all(row["decision"] for row in rows) and {row["variant"] for row in rows} == {"acl-hn"}

    runs = sorted(path.name for path in (tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 6
    stamps = {run: (tmp_path / "results" / "runs" / run / "done.json").stat().st_mtime_ns for run in runs}
    assert main(jobs) == 0 and len(submitted) == 5  # rerun: every run stored, no job
    assert main(pool) == 0
    assert stamps == {run: (tmp_path / "results" / "runs" / run / "done.json").stat().st_mtime_ns for run in runs}
