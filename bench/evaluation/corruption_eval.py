"""Common-corruption accuracy of a finetuned classifier (issue 13 §2; docs/corruptions.md).

The peers report it beside SA / PGD-20 / AA: RobustSSL's ``eval_test_OOD`` runs the 15 CIFAR-10-C
corruptions × 5 severities and reports the mean over corruptions per severity and the mean of those
(GodXuxilie/RobustSSL_Benchmark utils.py, called from finetuning_eval.py). Each
(corruption, severity) is one clean forward over the evaluation subset, so it costs a few clean
evaluations, nothing next to AutoAttack.

Where the corrupted images come from (``evaluate.corruptions``):
- ``official``: the CIFAR-10-C / CIFAR-100-C ``.npy`` files in the data directory (eval datasets
  ``cifar10c`` / ``cifar100c``, bench.engine.data), the same test indices as every other number;
- ``regenerated``: the CIFAR-C recipe re-run on the evaluation subset with a seeded generator
  (bench.engine.corruptions.regenerate; ``evaluate.corruption_seed``), for any dataset. Not the official
  files: every row says ``regenerated``, and the corruptions the suite approximates (motion blur,
  snow, frost) also say ``approximate``;
- ``auto`` (default): ``official`` for the -C eval datasets, no corruptions otherwise.

Rows: ``corruption:<name>:<severity>`` per pair, ``corruption-mean:<severity>`` (the mean over the
corruptions at one severity, the curve of accuracy against severity), ``corruption-mean`` (the mean
over every pair evaluated, RobustSSL's single number) and, when approximate corruptions are among
them, ``corruption-mean-exact`` (the mean over the pairs that follow the recipe exactly). The
per-image correctness of every pair goes into the evaluation's record (bench.store.records), so the
corruption accuracy of two classifiers can be compared paired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from bench.config import RunConfig
from bench.engine.corruptions import CORRUPTIONS, load_cifar_c, regenerate
from bench.engine.data import CORRUPTED_DATASETS, ImageData, resize_uint8, to_float
from bench.evaluation.evaluate import clean_correct

PREFIX = "corruption:"
MEAN = "corruption-mean"
MEAN_EXACT = "corruption-mean-exact"
REGENERATED, OFFICIAL, APPROXIMATE = "regenerated", "official", "approximate"
EMBEDDED = "digits"  # the default dataset, shipped in the package: regenerating its corruptions takes seconds


@dataclass(frozen=True)
class CorruptionResult:
    """One (corruption, severity): its row name, per-image correctness (bool [n], CPU) and labels."""

    name: str
    severity: int
    correct: torch.Tensor
    flags: tuple[str, ...]  # ('regenerated' | 'official', ['approximate'])

    @property
    def attack(self) -> str:
        return corruption_attack(self.name, self.severity)

    @property
    def accuracy(self) -> float:
        return 100.0 * int(self.correct.sum()) / max(1, self.correct.shape[0])


def corruption_attack(name: str, severity: int) -> str:
    """The ``attack`` column of a corruption row: ``corruption:<name>:<severity>``."""
    return f"{PREFIX}{name}:{severity}"


def parse_corruption_attack(attack: str) -> tuple[str, int] | None:
    """(name, severity) of a ``corruption:<name>:<severity>`` attack name; None for any other attack."""
    if not attack.startswith(PREFIX):
        return None
    name, _, severity = attack[len(PREFIX) :].rpartition(":")
    return (name, int(severity)) if name and severity.isdigit() else None


def corruption_source(config: RunConfig) -> str:
    """'official', 'regenerated' or 'none': ``evaluate.corruptions`` with 'auto' resolved by the eval dataset:
    the official files of the -C datasets, a regeneration on the embedded digits (seconds: so the default
    smoke report has its corruption table), none elsewhere (a regeneration of a large test set is opt-in)."""
    source = config.evaluate.corruptions
    if source != "auto":
        return source
    dataset = config.data.eval_name or config.data.name
    return OFFICIAL if dataset in CORRUPTED_DATASETS else REGENERATED if dataset == EMBEDDED else "none"


def corruption_names(config: RunConfig) -> tuple[str, ...]:
    return config.evaluate.corruption_names or tuple(CORRUPTIONS)


def corrupted_images(
    data: ImageData, indices: torch.Tensor, name: str, severity: int, config: RunConfig, device: torch.device | str
) -> torch.Tensor:
    """uint8 [n, C, H, W] on the CPU: the test images ``indices`` under one corruption, from the configured source."""
    if corruption_source(config) == OFFICIAL:
        images, labels = load_cifar_c(config.data.data_dir, CORRUPTED_DATASETS[data.name], name, severity)
        chosen = indices.cpu()
        if not torch.equal(labels[chosen], data.y_test[indices].cpu()):
            raise ValueError(
                f"the official {data.name} labels differ from the test split's at the evaluated indices: "
                "allowed the files of the dataset's own test set, in its order"
            )
        return resize_uint8(images[chosen], data.image_size)
    return regenerate(data.x_test[indices].cpu(), name, severity, seed=config.evaluate.corruption_seed, device=device)


def evaluate_corruptions(
    classifier: nn.Module, data: ImageData, indices: torch.Tensor, config: RunConfig, device: torch.device | str
) -> list[CorruptionResult]:
    """Accuracy on every configured (corruption, severity) of the test images ``indices``; [] when off."""
    source = corruption_source(config)
    if source == "none":
        return []
    settings = config.evaluate
    labels = data.y_test[indices].to(device)
    results = []
    for name in corruption_names(config):
        flags = (source,) + ((APPROXIMATE,) if source == REGENERATED and CORRUPTIONS[name].approximate else ())
        for severity in settings.corruption_severities:
            images = to_float(corrupted_images(data, indices, name, severity, config, device).to(device))
            correct = clean_correct(classifier, images, labels, settings.batch_size).cpu()
            results.append(CorruptionResult(name, severity, correct, flags))
    return results


def corruption_means(results: list[CorruptionResult]) -> dict[str, tuple[float, tuple[str, ...]]]:
    """The mean rows: ``corruption-mean:<severity>`` per severity, ``corruption-mean`` over every pair,
    and ``corruption-mean-exact`` over the non-approximate ones when some are approximate; each with its flags."""
    if not results:
        return {}
    source = results[0].flags[0]
    means = {}
    for severity in sorted({result.severity for result in results}):
        chosen = [result for result in results if result.severity == severity]
        means[f"{MEAN}:{severity}"] = (_mean(chosen), (source,) + ((APPROXIMATE,) if _approximate(chosen) else ()))
    means[MEAN] = (_mean(results), (source,) + ((APPROXIMATE,) if _approximate(results) else ()))
    exact = [result for result in results if APPROXIMATE not in result.flags]
    if _approximate(results) and exact:
        means[MEAN_EXACT] = (_mean(exact), (source,))
    return means


def _mean(results: list[CorruptionResult]) -> float:
    return sum(result.accuracy for result in results) / len(results)


def _approximate(results: list[CorruptionResult]) -> bool:
    return any(APPROXIMATE in result.flags for result in results)


def timed_corruptions(
    classifier: nn.Module, data: ImageData, indices: torch.Tensor, config: RunConfig, device: torch.device | str
) -> tuple[list[CorruptionResult], float]:
    """``evaluate_corruptions`` and its wall time in seconds."""
    began = time.perf_counter()
    results = evaluate_corruptions(classifier, data, indices, config, device)
    return results, time.perf_counter() - began
