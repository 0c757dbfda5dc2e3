"""The evaluation protocol for one encoder: finetune (SLF/ALF/AFF), evaluate, record sanity.

``bench run`` (after pretraining) and ``bench evaluate --checkpoint`` (a released or stored
encoder) both call ``finetune_and_evaluate``, so their numbers are comparable by
construction. ``evaluate_ready_classifier`` is the same evaluation for a classifier that
needs no finetuning (a RobustBench supervised adversarial-training model, scheme ``AT``).

Per scheme it stores the classifier, every sanity check and the per-image correctness of the
main attacks and corruptions (``correct_<scheme>.npz``, bench.store.records: what ``bench compare``
reads) in the run directory, and returns ``Measurement``s: the last-epoch accuracies (THE result),
the common-corruption accuracies (bench.evaluation.corruption_eval), PGD-20 at the other ε of
``evaluate.epsilon_curve``, and the best-on-test-epoch numbers the released scripts print
(metric ``accuracy_best_epoch``, kept apart because the epoch is chosen on the test set).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from bench.config import EvalConfig, RunConfig
from bench.engine import progress
from bench.engine.checkpoints import classifier_state
from bench.engine.data import ImageData, to_float
from bench.engine.models import ContrastiveModel
from bench.evaluation.corruption_eval import CorruptionResult, corruption_means, timed_corruptions
from bench.evaluation.evaluate import EvalReport, clean_accuracy, evaluate_classifier, pgd_accuracy, seeded_subset
from bench.evaluation.finetune import SchemeSettings, finetune, scheme_settings
from bench.store.atomic import save_torch_atomic
from bench.store.records import write_record
from bench.store.results import RunDir
from bench.store.rows import Measurement

PAPER_STEP_RATIO = 0.25  # PGD step / ε of the papers (2/255 for 8/255), for ε-curve points when the main ε is 0
BEST_EPOCH_METRIC = "accuracy_best_epoch"


def evaluation_indices(data: ImageData, settings: EvalConfig) -> torch.Tensor:
    """Which test images every number is measured on: a subset seeded by ``evaluate.subset_seed``
    (the same for every training seed, so seeds and methods are compared on the same images)."""
    return seeded_subset(data.x_test.shape[0], settings.n_eval, settings.subset_seed).to(data.x_test.device)


def evaluation_split(data: ImageData, settings: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``evaluation_indices``, as floats, and their labels."""
    subset = evaluation_indices(data, settings)
    return to_float(data.x_test[subset]), data.y_test[subset]


def finetune_and_evaluate(
    model: ContrastiveModel,
    finetune_bn: str,
    data: ImageData,
    config: RunConfig,
    device: torch.device,
    run_dir: RunDir,
    label: str = "",
    method: str = "",
) -> list[Measurement]:
    """Every scheme of the config: finetune, evaluate, store the classifier and its sanity checks."""
    measurements: list[Measurement] = []
    for scheme in config.finetune.schemes:
        measurements += finetune_and_evaluate_scheme(
            model, finetune_bn, data, config, device, run_dir, scheme, label=label, method=method
        )
    return measurements


def finetune_and_evaluate_scheme(
    model: ContrastiveModel,
    finetune_bn: str,
    data: ImageData,
    config: RunConfig,
    device: torch.device,
    run_dir: RunDir,
    scheme: str,
    label: str = "",
    method: str = "",
) -> list[Measurement]:
    """One scheme: finetune, evaluate, store its classifier and sanity checks; returns its measurements.

    The scheme's settings come from the config's protocol for ``method``
    (``bench.evaluation.finetune.scheme_settings``); a protocol may change the evaluation PGD's step
    (A-InfoNCE's RoCL scripts) and skip the per-epoch evaluation behind the best-epoch rows (RobustSSL
    reports the last epoch only).

    The global RNG (which draws the linear head's initial weights, ``torch.nn.Linear``) is
    seeded with the run's seed first, so a scheme's numbers depend only on the encoder, the
    settings and the seed: not on which schemes ran before it in the same process, nor on
    whether the encoder was just trained, reused from another run or loaded from its file.
    That is what lets SLF, ALF and AFF run as separate jobs (``bench sweep``) and still give
    the numbers of a sequential ``bench run``."""
    tune = scheme_settings(config, scheme, method)
    settings = scheme_evaluation(config.evaluate, tune)
    x_eval, y_eval = evaluation_split(data, settings)
    run_dir.set_progress("finetuning", scheme=scheme)
    torch.manual_seed(config.seed)
    began = time.perf_counter()
    epoch_eval = epoch_metrics_of(settings, x_eval, y_eval, config.seed) if tune.best_epoch else None
    tuned = finetune(tune, model, finetune_bn, data, seed=config.seed, device=device, epoch_eval=epoch_eval)
    finetune_s = time.perf_counter() - began
    save_torch_atomic(classifier_state(tuned.classifier), run_dir.classifier(scheme))
    report = evaluate_classifier(
        tuned.classifier,
        x_eval,
        y_eval,
        settings,
        device,
        seed=config.seed,
        progress=autoattack_progress(label, scheme),
    )
    write_sanity(run_dir, scheme, report)
    measurements = report_measurements(scheme, report, settings.epsilon, finetune_s + report.wall_s)
    on = scheme in settings.corruption_schemes
    scheme_config = dataclasses.replace(config, evaluate=settings)  # its record names the PGD step this scheme used
    measurements += corruption_measurements(tuned.classifier, data, scheme_config, device, run_dir, scheme, report, on)
    measurements += epsilon_curve(
        tuned.classifier, x_eval, y_eval, dataclasses.replace(config, evaluate=settings), scheme, report.n_eval
    )
    for attack, value in best_epoch(tuned.epoch_metrics).items():
        measurements.append(Measurement(scheme, attack, BEST_EPOCH_METRIC, value, settings.epsilon, report.n_eval))
    log_scheme(label, scheme, report)
    return measurements


def scheme_evaluation(evaluate: EvalConfig, tune: SchemeSettings) -> EvalConfig:
    """The evaluation settings of one scheme: the run's, with the protocol's PGD step."""
    if tune.eval_step_size is None or tune.eval_step_size == evaluate.step_size:
        return evaluate
    return dataclasses.replace(evaluate, step_size=tune.eval_step_size)


def epoch_metrics_of(
    settings: EvalConfig, x_eval: torch.Tensor, y_eval: torch.Tensor, seed: int
) -> Callable[[nn.Module], dict[str, float]]:
    """Clean and PGD-20 accuracy after an epoch (for the best-on-test-epoch rows the released scripts print)."""

    def epoch_metrics(classifier: nn.Module) -> dict[str, float]:
        return {
            "clean": clean_accuracy(classifier, x_eval, y_eval, settings.batch_size),
            "pgd20": pgd_accuracy(
                classifier,
                x_eval,
                y_eval,
                settings.epsilon,
                settings.step_size,
                settings.pgd_steps,
                batch_size=settings.batch_size,
                seed=seed,
            ),
        }

    return epoch_metrics


def evaluate_ready_classifier(
    classifier: nn.Module,
    data: ImageData,
    config: RunConfig,
    device: torch.device,
    run_dir: RunDir,
    scheme: str = "AT",
) -> list[Measurement]:
    """A classifier that needs no finetuning (supervised AT): the same evaluation and sanity record."""
    settings = config.evaluate
    x_eval, y_eval = evaluation_split(data, settings)
    began = time.perf_counter()
    report = evaluate_classifier(
        classifier, x_eval, y_eval, settings, device, seed=config.seed, progress=autoattack_progress("", scheme)
    )
    write_sanity(run_dir, scheme, report)
    measurements = report_measurements(scheme, report, settings.epsilon, time.perf_counter() - began)
    return measurements + corruption_measurements(classifier, data, config, device, run_dir, scheme, report, True)


def autoattack_progress(label: str, scheme: str):
    """Where AutoAttack's progress lines go while it runs (the stage names are not logged)."""
    prefix = f"  {label} {scheme}" if label else f"  {scheme}"

    def say(line: str) -> None:
        if line.startswith("AutoAttack"):
            progress.log(f"{prefix}: {line}")

    return say


def write_evaluation_record(
    run_dir: RunDir,
    scheme: str,
    data: ImageData,
    config: RunConfig,
    report: EvalReport,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Store which evaluated test images each main attack (and ``extra``: e.g. corruptions) left correct
    (``RunDir.correct``, bench.store.records): every evaluation leaves one, so two runs can be compared paired."""
    settings = config.evaluate
    write_record(
        run_dir.correct(scheme),
        evaluation_indices(data, settings).cpu(),
        {**report.correct, **(extra or {})},
        meta={
            "seed": config.seed,
            "subset_seed": settings.subset_seed,
            "epsilon": settings.epsilon,
            "step_size": settings.step_size,
            "pgd_steps": settings.pgd_steps,
            "image_size": int(data.x_test.shape[-1]),
            "eval_dataset": data.name,
            "n_test": int(data.x_test.shape[0]),
        },
    )


def corruption_measurements(
    classifier: nn.Module,
    data: ImageData,
    config: RunConfig,
    device: torch.device,
    run_dir: RunDir,
    scheme: str,
    report: EvalReport,
    with_corruptions: bool,
) -> list[Measurement]:
    """The common-corruption rows (bench.evaluation.corruption_eval; when configured, and for this scheme), after
    storing the evaluation's per-image record with the corruptions' correctness in it."""
    settings = config.evaluate
    indices = evaluation_indices(data, settings)
    results, wall_s = timed_corruptions(classifier, data, indices, config, device) if with_corruptions else ([], 0.0)
    corrupted = {result.attack: result.correct for result in results}
    write_evaluation_record(run_dir, scheme, data, config, report, corrupted)
    return corruption_rows(scheme, results, report, settings.epsilon, wall_s)


def corruption_rows(
    scheme: str, results: list[CorruptionResult], report: EvalReport, epsilon: float, wall_s: float
) -> list[Measurement]:
    """One ``accuracy`` row per (corruption, severity), then the means; each labelled with its source
    (``regenerated`` / ``official``, ``approximate``) next to the evaluation's sanity flags."""
    rows = [
        Measurement(
            scheme,
            result.attack,
            "accuracy",
            result.accuracy,
            epsilon,
            report.n_eval,
            wall_s,
            tuple(report.flags) + result.flags,
        )
        for result in results
    ]
    rows += [
        Measurement(scheme, attack, "accuracy", value, epsilon, report.n_eval, wall_s, tuple(report.flags) + flags)
        for attack, (value, flags) in corruption_means(results).items()
    ]
    return rows


def report_measurements(scheme: str, report: EvalReport, epsilon: float, wall_s: float) -> list[Measurement]:
    """One ``accuracy`` measurement per attack of an evaluation, carrying its sanity flags."""
    return [
        Measurement(scheme, attack, "accuracy", value, epsilon, report.n_eval, wall_s, tuple(report.flags))
        for attack, value in report.accuracy.items()
    ]


def epsilon_curve(
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: RunConfig,
    scheme: str,
    n_eval: int,
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
        value = pgd_accuracy(
            classifier,
            x,
            y,
            epsilon,
            ratio * epsilon,
            settings.pgd_steps,
            batch_size=settings.batch_size,
            seed=config.seed,
        )
        measurements.append(
            Measurement(scheme, f"pgd{settings.pgd_steps}", "accuracy_vs_epsilon", value, epsilon, n_eval)
        )
    return measurements


def best_epoch(epoch_metrics: list[dict[str, float]]) -> dict[str, float]:
    """The epoch the released scripts would report: best robust accuracy on the test set."""
    return max(epoch_metrics, key=lambda metrics: (metrics["pgd20"], metrics["clean"])) if epoch_metrics else {}


def write_sanity(run_dir: RunDir, scheme: str, report: EvalReport) -> None:
    """Every sanity check's verdict and numbers, passed or not, for the report; the ``aa-checks:<attack>``
    entries also keep AutoAttack's own check list and per-attack progress (bench.evaluation.autoattack_watch)."""
    checks = {name: {"passed": bool(passed), "detail": detail} for name, (passed, detail) in report.sanity.items()}
    for attack, recorded in report.autoattack.items():
        checks.setdefault(f"aa-checks:{attack}", {}).update(checks=recorded["checks"], progress=recorded["progress"])
    run_dir.write_json(run_dir.sanity(scheme), checks)


def log_scheme(label: str, scheme: str, report: EvalReport) -> None:
    prefix = f"  {label} {scheme}" if label else f"  {scheme}"
    flags = ";".join(report.flags)
    progress.log(
        f"{prefix}: "
        + ", ".join(f"{a} {v:.1f}%" for a, v in report.accuracy.items())
        + (f"  [{flags}]" if flags else "")
    )
