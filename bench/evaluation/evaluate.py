"""Evaluation of a classifier: clean accuracy, PGD-20, AutoAttack, and sanity checks.

Every function takes any ``nn.Module`` mapping images in [0, 1] to logits, puts it in eval
mode for the whole evaluation (attacks included) and restores its mode afterwards, so BN
running statistics never move during evaluation. AutoAttack is the official code
(fra31/auto-attack, packaged on PyPI as ``pyautoattack``); it is never reimplemented here.

Sanity checks (docs/fidelity.md, Evaluation) flag a row ``suspect`` instead of hiding it:
- ``order``: AA ≤ PGD-20 ≤ clean over whichever of them ran (APGD-CE counts as AA; AA may
  exceed PGD-20 by one sample's worth, rounding);
- ``stronger-pgd``: PGD with 2× steps and one more restart is not above PGD-20 by more than
  noise (two binomial standard errors of PGD-20's accuracy, at least one sample): a stronger
  attack that does worse points at randomness or obfuscated gradients;
- ``eps0``: PGD at ε = 0 equals clean accuracy (the attack path changes nothing by itself);
- ``eval-mode``: every forward of every submodule during the evaluation ran in eval mode
  (a model that switches a layer back to train mode inside its forward is caught);
- ``aa-reeval``: AA's returned examples, re-evaluated here, give AA's own accuracy (up to
  max(one sample, 0.1 %): GPU kernels may round a boundary example differently in another
  batch), and lie within ε of the inputs and in [0, 1];
- ``gradient-masking``: PGD-20 leaves accuracy near clean (drop < 5 points) while AA, whose
  Square attack needs no gradients, is more than 10 points lower;
- ``degenerate``: the logits are finite and the classifier predicts more than one class (a
  diverged classifier's "accuracy" is just the share of the class it always predicts);
- ``aa-checks``: none of AutoAttack's own reliability checks fired (randomness, output range,
  dynamic forward, zero gradients, Square's success after the gradient attacks, number of
  classes; bench.evaluation.autoattack_watch, fra31/auto-attack flags_doc.md).
- ``aa-complete``: AutoAttack ran every attack of its version on the points still robust (or
  stopped because none was left), and its last logged robust accuracy is that of its returned
  examples: an attack cut short cannot pass for a robust model.

Every attack also returns its per-image correctness (``EvalReport.correct``), which the protocol
stores (bench.store.records) so that two classifiers can later be compared paired, image by image.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.config import EvalConfig
from bench.engine.attacks import pgd_cross_entropy
from bench.evaluation.autoattack_watch import checks_summary, watch_autoattack
from bench.evaluation.batching import AutocastLogits, eval_batch_size, eval_mode

ProgressFn = Callable[[str], None]


@dataclass
class EvalReport:
    accuracy: dict[str, float]  # attack name → accuracy in %
    n_eval: int
    wall_s: float
    sanity: dict[str, tuple[bool, str]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    # the main attacks' per-image correctness (bool [n_eval], CPU): clean, pgdN, autoattack/apgd-ce
    correct: dict[str, torch.Tensor] = field(default_factory=dict)
    # per AutoAttack run: {"checks": [...], "progress": [...]} as bench.evaluation.autoattack_watch records them
    autoattack: dict[str, dict] = field(default_factory=dict)


def seeded_subset(n_total: int, n_eval: int | None, seed: int) -> torch.Tensor:
    """A fixed, sorted subset of test indices (all of them when n_eval is 0/None/≥ n_total)."""
    if not n_eval or n_eval >= n_total:
        return torch.arange(n_total)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return order[:n_eval].sort().values


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


# ---------------------------------------------------------------- fast path (bench speed measures it)


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Per-image correctness (bool [n], on y's device) of the model's predictions on clean inputs."""
    batch_size = eval_batch_size(model, x, batch_size)
    correct = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    with eval_mode(model), torch.no_grad():
        for start, (xb, yb) in zip(range(0, x.shape[0], batch_size), _batches(x, y, batch_size)):
            correct[start : start + yb.shape[0]] = model(xb).argmax(1) == yb
    return correct


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    return 100.0 * int(clean_correct(model, x, y, batch_size).sum()) / x.shape[0]


def pgd_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-image robustness (bool [n]) under PGD (random start, summed CE); with restarts an image is
    robust only if it survives all."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    batch_size = eval_batch_size(model, x, batch_size)
    robust = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    with eval_mode(model):
        for start, (xb, yb) in zip(range(0, x.shape[0], batch_size), _batches(x, y, batch_size)):
            survived = torch.ones_like(yb, dtype=torch.bool)
            for _ in range(restarts):
                x_adv = pgd_cross_entropy(
                    model, xb, yb, epsilon=epsilon, step_size=step_size, steps=steps, generator=generator
                )
                with torch.no_grad():
                    survived &= model(x_adv).argmax(1) == yb
            robust[start : start + yb.shape[0]] = survived
    return robust


def pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """PGD accuracy in % (see pgd_correct)."""
    robust = pgd_correct(model, x, y, epsilon, step_size, steps, restarts, batch_size, seed)
    return 100.0 * int(robust.sum()) / x.shape[0]


def autoattack_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    version: str = "standard",
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[float, dict]:
    """AutoAttack (Croce & Hein 2020), L∞: 'standard' (APGD-CE, APGD-T, FAB-T, Square) or 'apgd-ce'
    alone (the fast option, configured as inside 'standard': 100 iterations, 1 restart).

    Returns the accuracy re-evaluated on AA's adversarial examples and an info dict with the
    checks of the returned examples (RobustBench#7: re-evaluation must match AA's count), the
    per-image correctness on them (``correct``, bool [n]), AutoAttack's own checks
    (``autoattack_checks``, see bench.evaluation.autoattack_watch) and its per-attack progress
    (``autoattack_progress``); progress lines also go to ``progress`` while it runs.
    """
    from pyautoattack import AutoAttack

    if version not in ("standard", "apgd-ce"):
        raise ValueError(f"version={version!r} is invalid: allowed ['apgd-ce', 'standard']")
    batch_size = eval_batch_size(model, x, batch_size)
    options = {"version": "standard"} if version == "standard" else {"version": "custom", "attacks": ["apgd-ce"]}
    with eval_mode(model), watch_autoattack(progress) as watch:
        attack = AutoAttack(model, eps=epsilon, norm="Linf", device=str(device), seed=seed, **options)
        if version == "apgd-ce":
            attack.apgd.n_restarts = 1  # as APGD-CE runs inside 'standard' (the custom default is 5)
        x_adv, y_adv = attack.run_standard_evaluation(x, y, batch_size=batch_size)
        with torch.no_grad():
            predictions = torch.cat([model(xb).argmax(1) for xb, _ in _batches(x_adv, y, batch_size)])
    accuracy = 100.0 * float((predictions == y).float().mean())
    reported = 100.0 * float((y_adv.to(y.device) == y).float().mean())
    distance = float((x_adv - x).abs().amax()) if x.numel() else 0.0
    tolerance = max(100.0 / max(1, x.shape[0]), 0.1)
    info = {
        "reported_accuracy": reported,
        "reevaluated_matches": abs(reported - accuracy) <= tolerance + 1e-9,
        "max_perturbation": distance,
        "within_epsilon": distance <= epsilon + 1e-6,
        "in_range": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
        "correct": predictions == y,
        "autoattack_checks": watch.checks,
        "autoattack_progress": watch.progress,
        "autoattack_planned": list(attack.attacks_to_run),
    }
    return accuracy, info


@contextmanager
def recording_modes(model: nn.Module) -> Iterator[list[bool]]:
    """Log ``module.training`` at every forward of every submodule while inside."""
    log: list[bool] = []
    hooks = [
        module.register_forward_pre_hook(lambda module, inputs: log.append(module.training))
        for module in model.modules()
    ]
    try:
        yield log
    finally:
        for hook in hooks:
            hook.remove()


def attack_copy(model: nn.Module, device: torch.device | str, amp: bool = False) -> nn.Module:
    """The model every attack of an evaluation runs on: a copy on ``device``, so the caller's model
    (its mode, BN statistics and memory layout) is never modified. The copy is channels-last: on CPU
    the same function (convolutions give the same logits here), but small-batch CPU convolutions
    and pooling run ~1.8× faster, which is most of AutoAttack's time on the smoke CNN; on CUDA the
    layout tensor cores read without transposes (cuDNN may round differently). ``amp`` (CUDA only)
    runs it under bf16 autocast (``AutocastLogits``)."""
    copy_ = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    return AutocastLogits(copy_) if amp and torch.device(device).type == "cuda" else copy_


def evaluate_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: EvalConfig,
    device: torch.device | str,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Run the configured attacks on x, y (the caller picks the test subset), then the sanity checks.

    ``seed`` seeds the random starts (the run's seed, so reruns give the same numbers). ``progress``
    receives a line per stage and AutoAttack's own progress lines while it runs."""
    began = time.perf_counter()
    x, y = x.to(device), y.to(device)
    model = attack_copy(model, device, settings.amp)
    say = progress or (lambda stage: None)
    correct: dict[str, torch.Tensor] = {}
    sanity: dict[str, tuple[bool, str]] = {}
    autoattack: dict[str, dict] = {}
    pgd_name = f"pgd{settings.pgd_steps}"
    with recording_modes(model) as modes:
        for attack in settings.attacks:
            say(attack)
            if attack == "clean":
                correct["clean"] = clean_correct(model, x, y, settings.batch_size)
            elif attack.startswith("pgd"):
                correct[pgd_name] = pgd_correct(
                    model,
                    x,
                    y,
                    settings.epsilon,
                    settings.step_size,
                    settings.pgd_steps,
                    batch_size=settings.batch_size,
                    seed=seed,
                )
            else:
                version = "standard" if attack == "autoattack" else attack
                _, info = autoattack_accuracy(
                    model, x, y, settings.epsilon, version, settings.batch_size, seed, device, progress=progress
                )
                correct[attack] = info["correct"]
                sanity.update(_autoattack_sanity(attack, info))
                autoattack[attack] = {"checks": info["autoattack_checks"], "progress": info["autoattack_progress"]}
        accuracy = {attack: _percent(values) for attack, values in correct.items()}
        if settings.sanity:
            say("sanity")
            accuracy.setdefault("clean", clean_accuracy(model, x, y, settings.batch_size))
            sanity.update(_sanity_checks(model, x, y, settings, seed, accuracy, pgd_name))
    sanity["eval-mode"] = (not any(modes), f"{sum(modes)} of {len(modes)} module forwards in train mode")
    report = EvalReport(
        accuracy,
        int(x.shape[0]),
        time.perf_counter() - began,
        sanity,
        correct={attack: values.cpu() for attack, values in correct.items()},
        autoattack=autoattack,
    )
    report.flags = sorted({f"suspect:{name.split(':')[0]}" for name, (passed, _) in sanity.items() if not passed})
    return report


def _percent(correct: torch.Tensor) -> float:
    """Accuracy in % from per-image correctness (the same arithmetic as the *_accuracy functions)."""
    return 100.0 * int(correct.sum()) / max(1, correct.shape[0])


def _autoattack_sanity(attack: str, info: dict) -> dict[str, tuple[bool, str]]:
    """AA's returned examples re-evaluated (``aa-reeval``), AA's own checks (``aa-checks``) and its completion
    (``aa-complete``)."""
    accuracy = _percent(info["correct"])
    return {
        f"aa-reeval:{attack}": (
            info["reevaluated_matches"] and info["within_epsilon"] and info["in_range"],
            f"reported {info['reported_accuracy']:.2f} %, re-evaluated {accuracy:.2f} %, "
            f"max |δ| {info['max_perturbation']:.4g}",
        ),
        f"aa-checks:{attack}": (not info["autoattack_checks"], checks_summary(info["autoattack_checks"])),
        f"aa-complete:{attack}": autoattack_complete(info),
    }


def autoattack_complete(info: dict) -> tuple[bool, str]:
    """Every planned AutoAttack attack ran on every point still robust, or AA stopped because none was
    left (its own rule), and the robust accuracy it logged last is that of the examples it returned
    (its log prints two decimals of a percent)."""
    ran = [entry["attack"] for entry in info["autoattack_progress"]]
    missing = [name for name in info["autoattack_planned"] if name not in ran]
    last = info["autoattack_progress"][-1]["robust_accuracy"] if ran else None
    stopped_at_zero = (info["reported_accuracy"] if last is None else last) == 0.0  # nothing robust was left
    consistent = abs((0.0 if last is None else last) - info["reported_accuracy"]) <= 0.005 + 1e-9
    passed = (not missing or stopped_at_zero) and consistent
    detail = (
        f"ran {', '.join(ran) or 'nothing'} of {', '.join(info['autoattack_planned'])}"
        + (" (stopped: no robust point left)" if missing and stopped_at_zero else "")
        + (f"; last logged {last:.2f} %" if last is not None else "; no robust accuracy logged")
        + f", returned examples {info['reported_accuracy']:.2f} %"
    )
    return passed, detail


def degenerate_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[bool, str]:
    """Fails for non-finite logits, or one predicted class for every image of a test set with
    several classes: the signature of a diverged classifier (its 'accuracy' is a class share)."""
    batch_size = eval_batch_size(model, x, batch_size)
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(xb) for xb, _ in _batches(x, y, batch_size)])
    finite = bool(torch.isfinite(logits).all())
    predicted = int(logits.argmax(1).unique().numel()) if logits.numel() else 0
    constant = predicted <= 1 and int(y.unique().numel()) > 1
    return finite and not constant, f"finite logits: {finite}, distinct predicted classes: {predicted}"


def _sanity_checks(model, x, y, settings: EvalConfig, seed: int, accuracy: dict[str, float], pgd_name: str) -> dict:
    """The checks of the module docstring over whichever attacks ran (adds their extra accuracies)."""
    one_sample = 100.0 / max(1, x.shape[0])
    clean, robust = accuracy["clean"], accuracy.get(pgd_name)
    aa_name = next((name for name in ("autoattack", "apgd-ce") if name in accuracy), None)
    aa = accuracy.get(aa_name) if aa_name else None
    at_zero = pgd_accuracy(model, x, y, 0.0, settings.step_size, 1, batch_size=settings.batch_size, seed=seed)
    accuracy["eps0"] = at_zero
    order_ok, order_text = True, f"clean {clean:.2f} %"
    if robust is not None:
        order_ok, order_text = robust <= clean + 1e-9, order_text + f", {pgd_name} {robust:.2f} %"
    if aa is not None:
        bound = clean if robust is None else robust + one_sample
        order_ok, order_text = order_ok and aa <= bound + 1e-9, order_text + f", {aa_name} {aa:.2f} %"
    checks = {
        "order": (order_ok, order_text),
        "eps0": (abs(at_zero - clean) < 1e-9, f"ε=0 {at_zero:.2f} %, clean {clean:.2f} %"),
        "degenerate": degenerate_check(model, x, y, settings.batch_size),
    }
    if robust is not None:
        noise = max(one_sample, 200.0 * math.sqrt(robust / 100 * (1 - robust / 100) / max(1, x.shape[0])))
        stronger_name = f"pgd{2 * settings.pgd_steps}-restart"
        stronger = pgd_accuracy(
            model,
            x,
            y,
            settings.epsilon,
            settings.step_size,
            2 * settings.pgd_steps,
            restarts=2,
            batch_size=settings.batch_size,
            seed=seed + 1,
        )
        accuracy[stronger_name] = stronger
        checks["stronger-pgd"] = (
            stronger <= robust + noise + 1e-9,
            f"{pgd_name} {robust:.2f} %, 2×steps + restart {stronger:.2f} % (noise {noise:.2f})",
        )
        if aa is not None:
            checks["gradient-masking"] = (
                not (clean - robust < 5.0 and robust - aa > 10.0),
                f"PGD drop {clean - robust:.2f}, {aa_name} below PGD by {robust - aa:.2f} points",
            )
    return checks
