"""AutoAttack's own checks and progress are captured (issue 13 §3): models that trip each check."""

from __future__ import annotations

import logging

import pytest
import torch
from test_attacks import toy_problem
from test_evaluate import Quantised, masked_problem
from torch import nn

from bench.evaluation.autoattack_watch import LOGGER_NAME, check_name, watch_autoattack
from bench.evaluation.evaluate import autoattack_accuracy


class Softmaxed(nn.Module):
    """Returns probabilities instead of logits: AutoAttack's output-range check must fire."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class Noisy(nn.Module):
    """A randomised defence: fresh noise on the input at every forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.05 * torch.randn_like(x))


class Dynamic(nn.Module):
    """A test-time-optimisation defence: its forward calls autograd (AutoAttack's dynamic check)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.model(probe).sum(), probe)
        return self.model(x - 1e-3 * gradient.sign())


@pytest.fixture(scope="module")
def problem():
    return toy_problem(seed=7, n=16)


def _fired(info) -> list[str]:
    return [entry["check"] for entry in info["autoattack_checks"]]


def _run(model, x, y):
    return autoattack_accuracy(model, x, y, epsilon=0.08, version="apgd-ce", batch_size=16)[1]


def test_a_plain_model_trips_no_check_and_reports_progress(problem):
    model, x, y = problem
    lines: list[str] = []
    accuracy, info = autoattack_accuracy(
        model, x, y, epsilon=0.08, version="apgd-ce", batch_size=16, progress=lines.append
    )
    assert info["autoattack_checks"] == []
    assert any(line == "AutoAttack: running apgd-ce" for line in lines), lines
    assert any(line.startswith("AutoAttack: clean accuracy") for line in lines), lines
    (after,) = info["autoattack_progress"]
    assert after["attack"] == "apgd-ce" and abs(after["robust_accuracy"] - accuracy) <= 100 / 16
    logger = logging.getLogger(LOGGER_NAME)
    assert logger.propagate and logger.level == logging.NOTSET and not logger.handlers  # restored


def test_probabilities_trip_the_output_range_check(problem):
    model, x, y = problem
    lines: list[str] = []
    info = autoattack_accuracy(Softmaxed(model), x, y, epsilon=0.08, version="apgd-ce", progress=lines.append)[1]
    assert "output-range" in _fired(info)
    assert any("probability distribution" in line for line in lines)


def test_a_randomised_model_trips_the_randomized_check(problem):
    model, x, y = problem
    assert "randomized" in _fired(_run(Noisy(model), x, y))


def test_zero_gradients_are_reported():
    """APGD checks gradients only for its DLR losses, i.e. inside 'standard' (APGD-T); its targeted
    attack is run here directly, as AutoAttack configures it, for two iterations."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    x, y = masked_problem(8)
    with watch_autoattack() as watch:
        attack = APGDAttack_targeted(
            Quantised().eval(),
            n_iter=2,
            n_target_classes=1,
            eps=0.08,
            seed=0,
            device="cpu",
            logger=logging.getLogger(LOGGER_NAME),
        )
        attack.perturb(x, y)
    (entry,) = [entry for entry in watch.checks if entry["check"] == "zero-gradients"]
    assert "8 points with zero gradient" in entry["message"] and entry["count"] >= 1


def test_dynamic_check_fires_and_does_not_leak_into_the_next_model(problem):
    model, x, y = problem
    assert "dynamic" in _fired(_run(Dynamic(model), x, y))
    assert "dynamic" not in _fired(_run(model, x, y))  # pyautoattack alone would flag this one too


def test_class_count_and_square_checks_are_named():
    """The two checks that need a full 'standard' run, emitted by pyautoattack's own functions."""
    from pyautoattack import checks

    with watch_autoattack() as watch:
        logger = logging.getLogger(LOGGER_NAME)
        checks.check_n_classes(2, ["apgd-ce", "apgd-t"], 9, 9, logger=logger)
        checks.check_square_sr({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.40}, logger=logger)
        logger.warning("something new")
    assert [entry["check"] for entry in watch.checks] == ["n-classes", "square-success", "other"]
    assert check_name("it seems that more target classes (9) than possible (3) are used in FAB-T!") == "n-classes"
    assert "n-classes (×1)" in watch.summary()


def test_a_tripped_check_reaches_the_sanity_record_and_report(problem, tmp_path):
    """Issue 13 §3: AA's own check fails the evaluation's ``aa-checks`` sanity entry, flags the rows
    ``suspect:aa-checks``, is stored in sanity_<scheme>.json with its check list, and is a failed row
    of the sanity report."""
    import pandas as pd

    from bench.config import EvalConfig
    from bench.evaluation.evaluate import evaluate_classifier
    from bench.evaluation.scheme_run import write_sanity
    from bench.products.report.sanity import sanity_rows
    from bench.store.results import RunDir

    model, x, y = problem
    settings = EvalConfig(epsilon=0.08, step_size=0.02, attacks=("clean", "apgd-ce"), batch_size=16)
    report = evaluate_classifier(Softmaxed(model), x, y, settings, "cpu")
    passed, detail = report.sanity["aa-checks:apgd-ce"]
    assert not passed and "output-range (×" in detail and "suspect:aa-checks" in report.flags
    assert report.sanity["aa-complete:apgd-ce"][0], report.sanity["aa-complete:apgd-ce"]
    write_sanity(RunDir(tmp_path / "runs" / "r1"), "SLF", report)
    stored = RunDir.read_json(RunDir(tmp_path / "runs" / "r1").sanity("SLF"))["aa-checks:apgd-ce"]
    assert stored["passed"] is False and [entry["check"] for entry in stored["checks"]] == ["output-range"]
    assert [entry["attack"] for entry in stored["progress"]] == ["apgd-ce"]
    rows = sanity_rows(pd.DataFrame({"run_id": ["r1"], "method": ["acl"]}), tmp_path / "runs")
    failed = rows[~rows["passed"]]
    assert "aa-checks:apgd-ce" in set(failed["check"]) and "aa-complete:apgd-ce" not in set(failed["check"])


def _info(progress, planned=("apgd-ce", "apgd-t", "fab-t", "square"), reported=25.0):
    return {
        "autoattack_progress": [{"attack": a, "robust_accuracy": r, "elapsed_s": 1.0} for a, r in progress],
        "autoattack_planned": list(planned),
        "reported_accuracy": reported,
    }


def test_autoattack_completion_check():
    from bench.evaluation.evaluate import autoattack_complete

    full = [("apgd-ce", 40.0), ("apgd-t", 30.0), ("fab-t", 30.0), ("square", 25.0)]
    assert autoattack_complete(_info(full))[0]
    passed, detail = autoattack_complete(_info(full[:2], reported=30.0))  # cut short with robust points left
    assert not passed and "ran apgd-ce, apgd-t of apgd-ce, apgd-t, fab-t, square" in detail
    assert autoattack_complete(_info([("apgd-ce", 10.0), ("apgd-t", 0.0)], reported=0.0))[0]  # none left: AA stops
    assert autoattack_complete(_info([], reported=0.0))[0]  # nothing was correct to begin with
    assert not autoattack_complete(_info(full, reported=31.25))[0]  # log and returned examples disagree
