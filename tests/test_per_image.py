"""Per-image correctness from the evaluator: the accuracy functions are unchanged, bit for bit."""

from __future__ import annotations

import torch
from test_attacks import toy_problem

from bench.engine.attacks import pgd_cross_entropy
from bench.evaluation.batching import eval_mode
from bench.evaluation.evaluate import autoattack_accuracy, clean_accuracy, clean_correct, pgd_accuracy, pgd_correct


def _clean_accuracy_before(model, x, y, batch_size):
    """bench.evaluation.evaluate.clean_accuracy as it was before per-image correctness (commit 33c8d8f)."""
    with eval_mode(model), torch.no_grad():
        correct = sum(
            int((model(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum())
            for s in range(0, x.shape[0], batch_size)
        )
    return 100.0 * correct / x.shape[0]


def _pgd_accuracy_before(model, x, y, epsilon, step_size, steps, restarts, batch_size, seed):
    """bench.evaluation.evaluate.pgd_accuracy as it was before per-image correctness (commit 33c8d8f)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    robust = 0
    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s : s + batch_size], y[s : s + batch_size]
            survived = torch.ones_like(yb, dtype=torch.bool)
            for _ in range(restarts):
                x_adv = pgd_cross_entropy(
                    model, xb, yb, epsilon=epsilon, step_size=step_size, steps=steps, generator=generator
                )
                with torch.no_grad():
                    survived &= model(x_adv).argmax(1) == yb
            robust += int(survived.sum())
    return 100.0 * robust / x.shape[0]


def test_clean_accuracy_unchanged_and_per_image_matches_predictions():
    model, x, y = toy_problem(seed=4, n=100)
    for batch_size in (7, 256):
        assert clean_accuracy(model, x, y, batch_size) == _clean_accuracy_before(model, x, y, batch_size)
    correct = clean_correct(model, x, y, batch_size=7)
    assert correct.dtype == torch.bool and correct.shape == (100,)
    with torch.no_grad():
        assert torch.equal(correct, model(x).argmax(1) == y)


def test_pgd_accuracy_unchanged_bit_for_bit():
    model, x, y = toy_problem(seed=5, n=90)
    for restarts, batch_size, seed in ((1, 256, 0), (2, 32, 3)):
        settings = dict(epsilon=0.08, step_size=0.02, steps=5, restarts=restarts, batch_size=batch_size, seed=seed)
        assert pgd_accuracy(model, x, y, **settings) == _pgd_accuracy_before(model, x, y, **settings)
        correct = pgd_correct(model, x, y, **settings)
        assert correct.shape == (90,) and 100.0 * int(correct.sum()) / 90 == pgd_accuracy(model, x, y, **settings)
    # robust images are a subset of the clean-correct ones at ε > 0 on this problem
    robust = pgd_correct(model, x, y, epsilon=0.08, step_size=0.02, steps=5)
    assert not bool((robust & ~clean_correct(model, x, y)).any())


def test_autoattack_returns_per_image_correctness_consistent_with_its_accuracy():
    model, x, y = toy_problem(seed=6, n=40)
    accuracy, info = autoattack_accuracy(model, x, y, epsilon=0.08, version="apgd-ce", batch_size=16)
    correct = info["correct"]
    assert correct.dtype == torch.bool and correct.shape == (40,)
    assert 100.0 * float(correct.float().mean()) == accuracy
    assert not bool((correct & ~clean_correct(model, x, y)).any())  # AA only removes correct images
    assert accuracy < clean_accuracy(model, x, y)
