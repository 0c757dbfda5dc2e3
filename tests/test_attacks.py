"""PGD and the TRADES attack: the sanity properties every attack must have."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.engine.attacks import pgd, pgd_cross_entropy, trades_kl_attack
from bench.evaluation.evaluate import clean_accuracy, pgd_accuracy


def toy_problem(seed: int = 0, n: int = 128, classes: int = 2):
    """Gaussian classes around random centres in 3×4×4 images in [0, 1], and a small MLP fitted to them."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=generator)
    centres = 0.3 + 0.4 * torch.rand(classes, 3, 4, 4, generator=generator)
    x = (centres[y] + 0.1 * torch.randn(n, 3, 4, 4, generator=generator)).clamp(0, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), x, y


@pytest.mark.e2e
def test_epsilon_zero_gives_clean_accuracy():
    model, x, y = toy_problem()
    assert pgd_accuracy(model, x, y, epsilon=0.0, step_size=0.01, steps=10) == clean_accuracy(model, x, y)


def test_robust_accuracy_is_below_clean_and_drops_with_epsilon():
    model, x, y = toy_problem()
    clean = clean_accuracy(model, x, y)
    small = pgd_accuracy(model, x, y, epsilon=0.02, step_size=0.005, steps=10)
    large = pgd_accuracy(model, x, y, epsilon=0.1, step_size=0.025, steps=10)
    assert large <= small <= clean and large < clean


def test_more_steps_never_help_the_defender():
    model, x, y = toy_problem(seed=1)
    accuracies = [pgd_accuracy(model, x, y, epsilon=0.05, step_size=0.01, steps=steps) for steps in (1, 5, 20)]
    assert accuracies[0] >= accuracies[1] >= accuracies[2]


@pytest.mark.parametrize("random_init", [True, False])
def test_perturbation_stays_in_the_ball_and_the_image_range(random_init):
    model, x, y = toy_problem()
    x = x.clone()
    x[:8] = 0.0  # corners of the image range
    x[8:16] = 1.0
    x_adv = pgd_cross_entropy(model, x, y, epsilon=0.08, step_size=0.05, steps=7, random_init=random_init)
    assert (x_adv - x).abs().max() <= 0.08 + 1e-7
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_trades_attack_stays_in_the_ball_and_increases_the_kl():
    model, x, y = toy_problem()
    x_adv = trades_kl_attack(
        model, x, epsilon=0.05, step_size=0.01, steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert (x_adv - x).abs().max() <= 0.05 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    kl = lambda inputs: nn.functional.kl_div(
        nn.functional.log_softmax(model(inputs), 1), nn.functional.softmax(model(x), 1), reduction="sum"
    )
    assert kl(x_adv) > kl(x + 0.001 * torch.randn_like(x))


def test_attacks_leave_the_model_mode_alone():
    model, x, y = toy_problem()
    model.train()
    pgd_cross_entropy(model, x, y, epsilon=0.05, step_size=0.01, steps=2)
    assert model.training
    model.eval()
    trades_kl_attack(model, x, epsilon=0.05, step_size=0.01, steps=2)
    assert not model.training


def test_negative_epsilon_is_rejected_with_its_value():
    with pytest.raises(ValueError, match="epsilon=-0.1 is invalid"):
        pgd(lambda inputs: inputs.sum(), torch.zeros(1, 3), epsilon=-0.1, step_size=0.01, steps=1)
