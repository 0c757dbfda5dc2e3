"""The evaluation protocol for one encoder: finetune (SLF/ALF/AFF), evaluate, record sanity.

``bench run`` (after pretraining) and ``bench evaluate --checkpoint`` (a released or stored
encoder) both call ``finetune_and_evaluate``, so their numbers are comparable by
construction. ``evaluate_ready_classifier`` is the same evaluation for a classifier that
needs no finetuning (a RobustBench supervised adversarial-training model, scheme ``AT``).

Per scheme it stores the classifier and every sanity check in the run directory and
returns ``Measurement``s: the last-epoch accuracies (THE result), PGD-20 at the other ε of
``evaluate.epsilon_curve``, and the best-on-test-epoch numbers the released scripts print
(metric ``accuracy_best_epoch``, kept apart because the epoch is chosen on the test set).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from bench import progress
from bench.atomic import save_torch_atomic
from bench.checkpoints import classifier_state
from bench.config import EvalConfig, RunConfig
from bench.data import ImageData, to_float
from bench.evaluate import EvalReport, clean_accuracy, evaluate_classifier, pgd_accuracy, seeded_subset
from bench.finetune import finetune, scheme_settings
from bench.models import ContrastiveModel
from bench.results import Measurement, RunDir

PAPER_STEP_RATIO = 0.25  # PGD step / ε of the papers (2/255 for 8/255), for ε-curve points when the main ε is 0
BEST_EPOCH_METRIC = "accuracy_best_epoch"


def evaluation_split(data: ImageData, settings: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images every number is measured on: a subset seeded by ``evaluate.subset_seed``
    (the same for every training seed, so seeds are compared on the same images), as floats."""
    subset = seeded_subset(data.x_test.shape[0], settings.n_eval, settings.subset_seed).to(data.x_test.device)
    return to_float(data.x_test[subset]), data.y_test[subset]


def finetune_and_evaluate(
    model: ContrastiveModel, finetune_bn: str, data: ImageData, config: RunConfig, device: torch.device,
    run_dir: RunDir, label: str = "",
) -> list[Measurement]:
    """Every scheme of the config: finetune, evaluate, store the classifier and its sanity checks."""
    measurements: list[Measurement] = []
    for scheme in config.finetune.schemes:
        measurements += finetune_and_evaluate_scheme(model, finetune_bn, data, config, device, run_dir, scheme,
                                                     label=label)
    return measurements


def finetune_and_evaluate_scheme(
    model: ContrastiveModel, finetune_bn: str, data: ImageData, config: RunConfig, device: torch.device,
    run_dir: RunDir, scheme: str, label: str = "",
) -> list[Measurement]:
    """One scheme: finetune, evaluate, store its classifier and sanity checks; returns its measurements.

    The global RNG (which draws the linear head's initial weights, ``torch.nn.Linear``) is
    seeded with the run's seed first, so a scheme's numbers depend only on the encoder, the
    settings and the seed: not on which schemes ran before it in the same process, nor on
    whether the encoder was just trained, reused from another run or loaded from its file.
    That is what lets SLF, ALF and AFF run as separate jobs (``bench sweep``) and still give
    the numbers of a sequential ``bench run``."""
    settings = config.evaluate
    x_eval, y_eval = evaluation_split(data, settings)

    def epoch_metrics(classifier: nn.Module) -> dict[str, float]:
        return {
            "clean": clean_accuracy(classifier, x_eval, y_eval, settings.batch_size),
            "pgd20": pgd_accuracy(classifier, x_eval, y_eval, settings.epsilon, settings.step_size, settings.pgd_steps,
                                  batch_size=settings.batch_size, seed=config.seed),
        }

    run_dir.set_progress("finetuning", scheme=scheme)
    torch.manual_seed(config.seed)
    began = time.perf_counter()
    tuned = finetune(scheme_settings(config, scheme), model, finetune_bn, data, seed=config.seed, device=device,
                     epoch_eval=epoch_metrics)
    finetune_s = time.perf_counter() - began
    save_torch_atomic(classifier_state(tuned.classifier), run_dir.classifier(scheme))
    report = evaluate_classifier(tuned.classifier, x_eval, y_eval, settings, device, seed=config.seed)
    write_sanity(run_dir, scheme, report)
    measurements = report_measurements(scheme, report, settings.epsilon, finetune_s + report.wall_s)
    measurements += epsilon_curve(tuned.classifier, x_eval, y_eval, config, scheme, report.n_eval)
    for attack, value in best_epoch(tuned.epoch_metrics).items():
        measurements.append(Measurement(scheme, attack, BEST_EPOCH_METRIC, value, settings.epsilon, report.n_eval))
    log_scheme(label, scheme, report)
    return measurements


def evaluate_ready_classifier(
    classifier: nn.Module, data: ImageData, config: RunConfig, device: torch.device, run_dir: RunDir,
    scheme: str = "AT",
) -> list[Measurement]:
    """A classifier that needs no finetuning (supervised AT): the same evaluation and sanity record."""
    settings = config.evaluate
    x_eval, y_eval = evaluation_split(data, settings)
    began = time.perf_counter()
    report = evaluate_classifier(classifier, x_eval, y_eval, settings, device, seed=config.seed)
    write_sanity(run_dir, scheme, report)
    return report_measurements(scheme, report, settings.epsilon, time.perf_counter() - began)


def report_measurements(scheme: str, report: EvalReport, epsilon: float, wall_s: float) -> list[Measurement]:
    """One ``accuracy`` measurement per attack of an evaluation, carrying its sanity flags."""
    return [Measurement(scheme, attack, "accuracy", value, epsilon, report.n_eval, wall_s, tuple(report.flags))
            for attack, value in report.accuracy.items()]


def epsilon_curve(
    classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, config: RunConfig, scheme: str, n_eval: int,
) -> list[Measurement]:
    """PGD accuracy at each other ε of ``evaluate.epsilon_curve`` (metric ``accuracy_vs_epsilon``).

    The main ε is skipped: the scheme's PGD-20 row is that point (the report joins it). The step
    keeps the main attack's step/ε ratio (the papers' 1/4 when the main ε is 0)."""
    settings = config.evaluate
    ratio = settings.step_size / settings.epsilon if settings.epsilon > 0 else PAPER_STEP_RATIO
    measurements = []
    for epsilon in settings.epsilon_curve:
        if abs(epsilon - settings.epsilon) < 1e-9:
            continue
        value = pgd_accuracy(classifier, x, y, epsilon, ratio * epsilon, settings.pgd_steps,
                             batch_size=settings.batch_size, seed=config.seed)
        measurements.append(Measurement(scheme, f"pgd{settings.pgd_steps}", "accuracy_vs_epsilon", value, epsilon,
                                        n_eval))
    return measurements


def best_epoch(epoch_metrics: list[dict[str, float]]) -> dict[str, float]:
    """The epoch the released scripts would report: best robust accuracy on the test set."""
    return max(epoch_metrics, key=lambda metrics: (metrics["pgd20"], metrics["clean"])) if epoch_metrics else {}


def write_sanity(run_dir: RunDir, scheme: str, report: EvalReport) -> None:
    """Every sanity check's verdict and numbers, passed or not, for the report."""
    checks = {name: {"passed": bool(passed), "detail": detail} for name, (passed, detail) in report.sanity.items()}
    run_dir.write_json(run_dir.sanity(scheme), checks)


def log_scheme(label: str, scheme: str, report: EvalReport) -> None:
    prefix = f"  {label} {scheme}" if label else f"  {scheme}"
    flags = ";".join(report.flags)
    progress.log(f"{prefix}: " + ", ".join(f"{a} {v:.1f}%" for a, v in report.accuracy.items())
                 + (f"  [{flags}]" if flags else ""))
