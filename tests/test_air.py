"""AIR's regularisers (bench.engine.regularizers) and the acl-air / dynacl-air steps, against independent
float64 computations written here from the paper's formulas and the released AIR.py arithmetic."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.config import AttackConfig, ConfigError
from bench.engine.attacks import pgd
from bench.engine.data import to_float
from bench.engine.regularizers import invariant_regularizers, pairwise_batch_softmax
from bench.engine.views import StrongAugment
from bench.methodkit import registry
from bench.methodkit.method import StepContext
from bench.methodkit.post import published

T = 0.5


def batch_distribution(anchors: np.ndarray, targets: np.ndarray, temperature: float = T) -> np.ndarray:
    """softmax over the batch of cos(anchors[b], targets[b]) / T, with explicit loops."""
    logits = []
    for a, t in zip(anchors, targets):
        logits.append(float(a @ t) / (math.sqrt(float(a @ a)) * math.sqrt(float(t @ t))) / temperature)
    top = max(logits)
    weights = [math.exp(value - top) for value in logits]
    return np.array([w / sum(weights) for w in weights])


def expected_regularizers(z_i, z_j, z_o, a_i, a_j, official: bool) -> tuple[float, float]:
    """SIR and AIR in float64 numpy: KL(P_i || P_j), KL(Q_i || Q_j) (paper), or the released sums."""
    p_i, p_j = batch_distribution(z_i, z_o), batch_distribution(z_j, z_o)
    q_i = batch_distribution(a_i, z_o) * batch_distribution(a_i, z_i)
    q_j = batch_distribution(a_j, z_o) * batch_distribution(a_j, z_j)
    if official:  # F.kl_div(input=P_i, target=log P_j, log_target=True): sum exp(target) * (target - input)
        return float(np.sum(p_j * (np.log(p_j) - p_i))), float(np.sum(q_j * (np.log(q_j) - q_i)))
    return float(np.sum(p_i * np.log(p_i / p_j))), float(np.sum(q_i * np.log(q_i / q_j)))


def random_inputs(seed: int = 0, batch: int = 5, dim: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=generator, dtype=torch.float64) for _ in range(5)]


@pytest.mark.parametrize("quirks", ["none", "official"])
def test_regularizer_values_match_an_independent_computation(quirks):
    for seed in range(3):
        tensors = random_inputs(seed)
        sir, air = invariant_regularizers(*tensors, temperature=T, quirks=quirks)
        expected = expected_regularizers(*(t.numpy() for t in tensors), official=quirks == "official")
        assert float(sir) == pytest.approx(expected[0], abs=1e-12)
        assert float(air) == pytest.approx(expected[1], abs=1e-12)


def test_official_quirk_is_torch_kl_div_given_a_probability():
    """The released call, executed literally on independently built distributions."""
    z_i, z_j, z_o, a_i, a_j = random_inputs(3)
    p_i = torch.softmax((F.normalize(z_i) * F.normalize(z_o)).sum(1) / T, -1)
    log_p_j = torch.log_softmax((F.normalize(z_j) * F.normalize(z_o)).sum(1) / T, -1)
    released = F.kl_div(p_i, log_p_j, log_target=True, reduction="sum")
    sir, _ = invariant_regularizers(z_i, z_j, z_o, a_i, a_j, T, "official")
    assert float(sir) == pytest.approx(float(released), abs=1e-12)


def test_official_sum_can_be_negative_where_the_kl_cannot():
    """Identical views: KL = 0; the released sum is Σ P log P − Σ P² < 0 (hand arithmetic below)."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    z_o = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    sir, air = invariant_regularizers(z, z, z_o, z, z, T, "none")
    assert float(sir) == 0.0 and float(air) == 0.0
    sir_official, _ = invariant_regularizers(z, z, z_o, z, z, T, "official")
    # cosines with z_o: 1, 0, 1/√2 -> logits 2, 0, √2; P = e^l / Σ e^l.
    logits = [2.0, 0.0, math.sqrt(2.0)]
    total = sum(math.exp(v) for v in logits)
    p = [math.exp(v) / total for v in logits]
    hand = sum(pb * math.log(pb) for pb in p) - sum(pb * pb for pb in p)
    assert float(sir_official) == pytest.approx(hand, abs=1e-12) and hand < 0


def independent_regularizers_torch(z_i, z_j, z_o, a_i, a_j):
    """The paper's KLs written with explicit exp/sum (autograd gives the reference gradients)."""

    def dist(x, y):
        cosine = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
        e = torch.exp(cosine / T)
        return e / e.sum()

    p_i, p_j = dist(z_i, z_o), dist(z_j, z_o)
    q_i, q_j = dist(a_i, z_o) * dist(a_i, z_i), dist(a_j, z_o) * dist(a_j, z_j)
    return (p_i * torch.log(p_i / p_j)).sum(), (q_i * torch.log(q_i / q_j)).sum()


@pytest.mark.parametrize("term", [0, 1])
def test_regularizer_gradients_reach_the_right_inputs(term):
    tensors = [t.requires_grad_(True) for t in random_inputs(7)]
    ours = invariant_regularizers(*tensors, temperature=T)[term]
    grads = torch.autograd.grad(ours, tensors, allow_unused=True)
    reference_inputs = [t.detach().clone().requires_grad_(True) for t in tensors]
    reference = independent_regularizers_torch(*reference_inputs)[term]
    expected = torch.autograd.grad(reference, reference_inputs, allow_unused=True)
    for name, got, want in zip(("z_i", "z_j", "z_orig", "adv_i", "adv_j"), grads, expected):
        if want is None:  # SIR does not depend on the adversarial views
            assert got is None or torch.count_nonzero(got) == 0, name
            continue
        assert got is not None and torch.allclose(got, want, atol=1e-10), name
        assert torch.count_nonzero(want) > 0, name
    if term == 0:
        assert expected[3] is None and expected[4] is None


def test_batch_softmax_is_the_diagonal_of_the_released_logits():
    a, b = random_inputs(11)[:2]
    logits = F.normalize(a) @ F.normalize(b).T / T
    assert torch.allclose(pairwise_batch_softmax(a, b, T), torch.softmax(torch.diagonal(logits), 0), atol=1e-12)


def test_regularizer_inputs_are_checked():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="quirks='exact' is invalid: allowed"):
        invariant_regularizers(z, z, z, z, z, T, "exact")
    with pytest.raises(ValueError, match="same \\[B, D\\] shape"):
        pairwise_batch_softmax(torch.zeros(3, 2), torch.zeros(4, 2), T)


# --------------------------------------------------------------------------- the AIR step


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """NT-Xent with explicit sums (float64): mean over the 2B anchors of -log(e_pos / Σ_{k≠u} e_uk)."""
    z = torch.cat([z1, z2]).double()
    n, batch = z.shape[0], z1.shape[0]
    e = torch.exp(z @ z.T / T)
    terms = []
    for u in range(n):
        partner = (u + batch) % n
        terms.append(-torch.log(e[u, partner] / (e[u].sum() - e[u, u])))
    return torch.stack(terms).mean()


def make_context(epoch: int, epochs: int, seed: int = 3) -> StepContext:
    return StepContext(
        epoch,
        0,
        1,
        torch.device("cpu"),
        torch.Generator().manual_seed(seed),
        AttackConfig(epsilon=0.1, step_size=0.025, steps=2),
        epochs=epochs,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "name, epoch, epochs, strength, omega, quirks",
    [
        ("acl-air", 5, 8, 1.0, 0.0, "none"),
        ("dynacl-air", 5, 8, 0.5, (2 / 3) * 0.5, "none"),  # P = 2: s = 1 - 2*2/8
        ("dynacl-air", 1, 8, 1.0, 0.0, "official"),
    ],
)
def test_air_step_matches_an_independent_recomputation(digits, name, epoch, epochs, strength, omega, quirks):
    cls = registry.get(name)
    method = cls(cls.make_params({"anneal_period": 2, "quirks": quirks} if name != "acl-air" else {"quirks": quirks}))
    torch.manual_seed(0)
    model = method.build_model("small_cnn")
    images = to_float(digits.x_train[:16])
    reference_model = copy.deepcopy(model)
    model.train()
    loss, logs = method.training_step(model, images, make_context(epoch, epochs))
    assert logs["strength"] == pytest.approx(strength) and logs["omega"] == pytest.approx(omega)

    generator = torch.Generator().manual_seed(3)
    view = StrongAugment(
        crop_scale=(1 - 0.9 * strength, 1.0),
        jitter=(0.4 * strength,) * 3 + (0.1 * strength,),
        jitter_p=0.8 * strength,
        grayscale_p=0.2 * strength,
    )
    clean = torch.cat([view(images, generator), view(images, generator)])
    reference_model.eval()
    adversarial = pgd(
        lambda x: reference_nt_xent(*reference_model(x, "pgd").chunk(2)),
        clean,
        epsilon=0.1,
        step_size=0.025,
        steps=2,
        generator=generator,
    )
    reference_model.train()
    a1, a2 = reference_model(adversarial, "pgd").chunk(2)
    z1, z2 = reference_model(clean, "normal").chunk(2)
    z_orig = reference_model(images, "normal")
    sir, air = expected_regularizers(
        *(t.detach().double().numpy() for t in (z1, z2, z_orig, a1, a2)), official=quirks == "official"
    )
    contrastive = (1 - omega) * reference_nt_xent(z1, z2) + (1 + omega) * reference_nt_xent(a1, a2)
    assert loss.item() == pytest.approx(contrastive.item() + 0.5 * sir + 0.5 * air, abs=1e-5)
    assert float(logs["sir"]) == pytest.approx(sir, abs=1e-5) and float(logs["air"]) == pytest.approx(air, abs=1e-5)


def test_air_parameters_are_checked_and_published():
    cls = registry.get("acl-air")
    with pytest.raises(ConfigError, match="lambda_sir=-1.0 is invalid: allowed finite numbers >= 0"):
        cls.make_params({"lambda_sir": -1.0})
    # pretraining.py defaults: --lambda1 0.5 --lambda2 0.5, LARS lr 5.0, 1000 epochs, batch 512.
    params = cls.published("paper", "cifar10").params
    assert (params["lambda_sir"], params["lambda_air"]) == (0.5, 0.5)
    pretrain = cls.published("paper", "cifar100").pretrain
    assert (pretrain["lr"], pretrain["epochs"], pretrain["batch_size"]) == (5.0, 1000, 512)
    assert pretrain["weight_decay"] == 1e-6
    # run.sh: --DynAug; LP-AFF.py clusters into as many groups as the dataset has classes.
    dynamic, spelled = registry.get("dynacl-air++"), registry.spelling("dynacl-air++")
    assert published(dynamic, spelled, "paper", "cifar100").params["post_clusters"] == 100
    assert published(dynamic, spelled, "paper", "cifar10").params["post_clusters"] == 10
    assert published(dynamic, spelled, "paper", "cifar10").params["anneal_lambda"] == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="dataset='stl10' is invalid for the paper settings of 'dynacl-air\\+\\+'"):
        published(dynamic, spelled, "paper", "stl10")
    variant = registry.spelling("dynacl-air++-ip")
    assert published(registry.get("dynacl-air++-ip"), variant, "paper", "cifar100").params["post_clusters"] == 100
