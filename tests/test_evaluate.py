"""Evaluator: eval mode, untouched BN statistics, AutoAttack on CPU, and the sanity flags."""

from __future__ import annotations

import pytest
import torch
from test_attacks import toy_problem
from torch import nn

from bench.config import EvalConfig
from bench.evaluation.evaluate import autoattack_accuracy, evaluate_classifier, seeded_subset


class SmallBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)
        )

    def forward(self, x):
        return self.body(x)


class Quantised(nn.Module):
    """Gradient masking by construction: the input is rounded to 8 levels before a linear
    model, so every input gradient is exactly zero. PGD cannot move (it only keeps its random
    start), but AutoAttack's Square attack needs no gradients and flips the small-margin
    predictions: clean ≈ PGD-20 ≫ AA, the signature the gradient-masking check looks for."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(48, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.stack([-torch.ones(48), torch.ones(48)]) / 48)
            self.linear.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        two = 40 * self.linear(torch.flatten(torch.round(x * 8) / 8, 1))
        # eight more classes that are never predicted: AutoAttack's targeted attacks need 10
        return torch.cat([two, torch.full((x.shape[0], 8), -100.0)], dim=1)


def masked_problem(n: int = 40):
    generator = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (n,), generator=generator)
    x = (0.5 + 0.07 * (2 * y.float() - 1)).view(-1, 1, 1, 1).expand(n, 3, 4, 4).clone()
    x += 0.01 * torch.randn(n, 3, 4, 4, generator=generator)
    return x.clamp(0, 1), y


def test_seeded_subset_is_fixed_and_sorted():
    first, second = seeded_subset(100, 10, 3), seeded_subset(100, 10, 3)
    assert torch.equal(first, second) and torch.equal(first, first.sort().values) and len(first) == 10
    assert len(seeded_subset(100, 0, 3)) == 100


@pytest.mark.e2e
def test_evaluation_runs_in_eval_mode_restores_mode_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = SmallBNNet().train()
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 2, (16,))
    model(x)  # non-trivial running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = EvalConfig(epsilon=0.05, step_size=0.01, pgd_steps=3, attacks=("clean", "pgd20"))
    report = evaluate_classifier(model, x, y, settings, "cpu")
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report.sanity["eval-mode"][0]


@pytest.mark.e2e
def test_autoattack_apgd_ce_on_cpu_is_below_pgd_and_clean():
    model, x, y = toy_problem()
    x, y = x[:48], y[:48]
    settings = EvalConfig(epsilon=0.08, step_size=0.02, attacks=("clean", "pgd20", "apgd-ce"))
    report = evaluate_classifier(model, x, y, settings, "cpu")
    accuracy = report.accuracy
    assert accuracy["apgd-ce"] <= accuracy["pgd20"] + 100 / 48 and accuracy["pgd20"] <= accuracy["clean"]
    assert report.sanity["aa-reeval:apgd-ce"][0], report.sanity
    assert not report.flags, report.sanity


@pytest.mark.e2e
def test_autoattack_standard_on_a_few_samples():
    model, x, y = toy_problem(seed=2, classes=10)
    accuracy, info = autoattack_accuracy(model, x[:16], y[:16], epsilon=0.08, version="standard")
    clean = 100.0 * float((model(x[:16]).argmax(1) == y[:16]).float().mean())
    assert accuracy < clean  # the attacks found adversarial examples on this small-margin problem
    assert info["reevaluated_matches"] and info["within_epsilon"] and info["in_range"]
    assert info["max_perturbation"] <= 0.08 + 1e-6


@pytest.mark.e2e
def test_gradient_masked_model_is_flagged_suspect():
    model = Quantised().eval()
    x, y = masked_problem()
    settings = EvalConfig(epsilon=0.15, step_size=0.04, attacks=("clean", "pgd20", "autoattack"))
    report = evaluate_classifier(model, x, y, settings, "cpu")
    assert report.accuracy["clean"] - report.accuracy["pgd20"] < 5, report.accuracy
    assert report.accuracy["autoattack"] < report.accuracy["pgd20"] - 10, report.accuracy
    assert "suspect:gradient-masking" in report.flags


@pytest.mark.e2e
def test_healthy_model_has_no_suspect_flag():
    model, x, y = toy_problem(seed=4)
    settings = EvalConfig(epsilon=0.05, step_size=0.0125, attacks=("clean", "pgd20", "apgd-ce"))
    report = evaluate_classifier(model, x[:64], y[:64], settings, "cpu")
    assert report.flags == [], report.sanity
    assert {"aa-checks:apgd-ce", "aa-complete:apgd-ce", "aa-reeval:apgd-ce"} <= set(report.sanity)
    assert report.accuracy["pgd40-restart"] <= report.accuracy["pgd20"] + 100 / 64


class SneakyTrainMode(SmallBNNet):
    """Switches its BatchNorm back to train mode inside forward: the top module stays in eval mode."""

    def forward(self, x):
        self.body[1].train()
        return self.body(x)


class Randomised(nn.Module):
    """Predictions are noise: ε = 0 PGD and the clean pass disagree, which the eps0 check must catch."""

    def forward(self, x):
        return torch.randn(x.shape[0], 10) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_layer_put_in_train_mode_inside_forward_is_flagged():
    model = SneakyTrainMode()
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 2, (16,))
    report = evaluate_classifier(
        model, x, y, EvalConfig(epsilon=0.05, step_size=0.01, pgd_steps=2, attacks=("clean", "pgd20")), "cpu"
    )
    assert not report.sanity["eval-mode"][0] and "suspect:eval-mode" in report.flags


def test_randomised_predictions_fail_the_eps0_check():
    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 4, 4), torch.randint(0, 10, (64,))
    report = evaluate_classifier(
        Randomised(), x, y, EvalConfig(epsilon=0.05, step_size=0.01, pgd_steps=2, attacks=("clean", "pgd20")), "cpu"
    )
    assert "suspect:eps0" in report.flags, report.sanity


@pytest.mark.e2e
def test_sanity_checks_run_without_pgd20():
    model, x, y = toy_problem(seed=4)
    settings = EvalConfig(epsilon=0.05, step_size=0.0125, attacks=("clean", "apgd-ce"))
    report = evaluate_classifier(model, x[:32], y[:32], settings, "cpu")
    assert {"order", "eps0", "eval-mode", "aa-reeval:apgd-ce"} <= set(report.sanity), report.sanity
    assert "apgd-ce" in report.sanity["order"][1] and report.accuracy["eps0"] == report.accuracy["clean"]
    assert "stronger-pgd" not in report.sanity and not report.flags
