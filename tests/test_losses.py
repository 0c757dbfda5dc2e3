"""Losses against independent formula-level computations (plain loops over pairs, float64).

The expected numbers are computed here from DESIGN §3 and from the released A-InfoNCE
code's arithmetic, never by calling the function under test; gradient routing is checked
with autograd on the function under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.losses import AdaptiveAlpha, a_infonce, adaptive_alpha, nt_xent

T = 0.5


def features(batch: int, views: int, dim: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=generator, dtype=torch.float64), dim=-1).float()


# ------------------------------------------------------------------ hand formulas (DESIGN §3)


class Hand:
    """ℓ, ℓ_HN and c(u, p) by explicit loops; anchors are (instance, view) pairs."""

    def __init__(self, feats: torch.Tensor, temperature: float = T):
        self.z = feats.double().numpy()
        self.batch, self.views = self.z.shape[:2]
        self.t = temperature
        self.nodes = [(i, v) for v in range(self.views) for i in range(self.batch)]

    def e(self, u, k) -> float:
        return math.exp(float(np.dot(self.z[u], self.z[k])) / self.t)

    def positives(self, u):
        return [(u[0], v) for v in range(self.views) if v != u[1]]

    def negatives(self, u):
        return [k for k in self.nodes if k[0] != u[0]]

    def ell(self, u, p, hard=None) -> float:
        if hard is None:
            return -math.log(self.e(u, p) / sum(self.e(u, k) for k in self.nodes if k != u))
        beta, tau = hard
        negs = self.negatives(u)
        n = len(negs)
        pos_mean = sum(self.e(u, q) for q in self.positives(u)) / len(self.positives(u))
        imp = [self.e(u, k) ** beta for k in negs]
        mean_imp = sum(imp) / n
        ng = (sum(w / mean_imp * self.e(u, k) for w, k in zip(imp, negs)) - tau * n * pos_mean) / (1 - tau)
        ng = max(ng, n * math.exp(-1 / self.t))
        return -math.log(self.e(u, p) / (pos_mean + ng))

    def loss(self, adversarial, alpha=None, w=1.0, hard=None, scale=1.0) -> float:
        total = 0.0
        for u in self.nodes:
            terms = []
            for p in self.positives(u):
                if adversarial[u[1]] == adversarial[p[1]]:
                    terms.append(self.ell(u, p, hard))
                elif alpha is None:
                    terms.append(w * self.ell(u, p, hard))
                else:
                    a, v = (u, p) if adversarial[u[1]] else (p, u)
                    terms.append(w * (alpha * self.ell(v, a, hard) + (1 - alpha) * self.ell(a, v, hard)))
            total += sum(terms) / len(terms)
        return scale * total / len(self.nodes)


def close(value: torch.Tensor, expected: float, tol: float = 1e-5) -> bool:
    return abs(float(value) - expected) <= tol * max(1.0, abs(expected))


# ------------------------------------------------------------------ symmetric / SimCLR


def test_two_views_symmetric_is_simclr():
    feats = features(5, 2)
    expected = Hand(feats).loss((False, False))
    assert close(a_infonce(feats, (False, False)), expected)
    assert close(nt_xent(feats[:, 0], feats[:, 1], T), expected)


@pytest.mark.parametrize("adversarial", [(False, False, False, False), (True, False, False, False)])
def test_four_views_symmetric_is_supcon_mean_over_positives(adversarial):
    feats = features(4, 4, seed=1)
    expected = Hand(feats).loss(adversarial, scale=T / 0.07)
    assert close(a_infonce(feats, adversarial, scale=T / 0.07), expected)


def test_adv_weight_without_ip_weights_cross_pairs():
    feats = features(3, 3, seed=2)
    expected = Hand(feats).loss((False, False, True), w=1.5)
    assert close(a_infonce(feats, (False, False, True), adv_weight=1.5), expected)


# ------------------------------------------------------------------ inferior positives


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("w", [0.7, 1.5])
@pytest.mark.parametrize("adversarial", [(True, False, False, False), (False, False, True)])
def test_ip_values_equal_hand(alpha, w, adversarial):
    feats = features(3, len(adversarial), seed=3)
    expected = Hand(feats).loss(adversarial, alpha=alpha, w=w)
    assert close(a_infonce(feats, adversarial, alpha=alpha, adv_weight=w), expected)


def _ip_grads(alpha: float):
    """Only adversarial/clean positives: V = 2 with one clean and one adversarial view."""
    leaf = features(4, 2, seed=4).requires_grad_(True)
    a_infonce(leaf, (False, True), alpha=alpha).backward()
    return leaf.grad[:, 0], leaf.grad[:, 1]


def test_ip_alpha_zero_gives_no_gradient_to_clean_views():
    clean, adversarial = _ip_grads(0.0)
    assert torch.count_nonzero(clean) == 0 and adversarial.abs().sum() > 0


def test_ip_alpha_one_gives_no_gradient_to_adversarial_views():
    clean, adversarial = _ip_grads(1.0)
    assert torch.count_nonzero(adversarial) == 0 and clean.abs().sum() > 0


def test_ip_half_equals_symmetric_stop_gradient_average():
    feats = features(4, 2, seed=5)
    hand = Hand(feats)
    expected = sum(0.5 * (hand.ell((i, 0), (i, 1)) + hand.ell((i, 1), (i, 0))) for i in range(4)) / 4
    assert close(a_infonce(feats, (False, True), alpha=0.5), expected)
    # gradients: every ℓ^sg moves only its anchor, so the clean grad is half the anchor-only grad of ℓ(v→a)
    leaf = feats.clone().requires_grad_(True)
    a_infonce(leaf, (False, True), alpha=0.5).backward()
    anchor_only = feats.clone().requires_grad_(True)
    a_infonce(anchor_only, (False, True), detach_contrast=True).backward()
    assert torch.allclose(leaf.grad, anchor_only.grad, atol=1e-6)


def test_alpha_tensor_is_accepted():
    feats = features(3, 2, seed=6)
    assert close(a_infonce(feats, (False, True), alpha=torch.tensor(0.3)), Hand(feats).loss((False, True), alpha=0.3))


# ------------------------------------------------------------------ detach_contrast (RoCL)


def test_detach_contrast_sends_gradient_only_to_anchors():
    feats = features(3, 3, seed=7)
    leaf = feats.clone().requires_grad_(True)
    a_infonce(leaf, (False, False, True), detach_contrast=True).backward()
    # anchor-only gradient of ℓ(u→p): −(1/T)(z_p − Σ_k softmax_k z_k), averaged; check row 0 by hand
    z = feats.transpose(0, 1).reshape(9, -1).double()  # row = view·B + instance
    expected = torch.zeros(9, feats.shape[-1], dtype=torch.float64)
    for u in range(9):
        logits = (z[u] @ z.T) / T
        logits[u] = -float("inf")
        prob = torch.softmax(logits, 0)
        positives = [k for k in range(9) if k % 3 == u % 3 and k != u]
        for p in positives:
            expected[u] += -(z[p] - prob @ z) / T / len(positives)
    expected /= 9
    got = leaf.grad.transpose(0, 1).reshape(9, -1).double()
    assert torch.allclose(got, expected, atol=1e-5)


# ------------------------------------------------------------------ hard negatives


def test_hn_beta0_tau0_is_mean_positive_infonce():
    feats = features(4, 3, seed=8)
    hand = Hand(feats)
    total = 0.0
    for u in hand.nodes:
        pos_mean = sum(hand.e(u, q) for q in hand.positives(u)) / 2
        neg_sum = sum(hand.e(u, k) for k in hand.negatives(u))
        assert neg_sum > len(hand.negatives(u)) * math.exp(-1 / T)  # clamp inactive
        total += sum(-math.log(hand.e(u, p) / (pos_mean + neg_sum)) for p in hand.positives(u)) / 2
    assert close(a_infonce(feats, (False, False, True), hard_negatives=(0.0, 0.0)), total / len(hand.nodes))


@pytest.mark.parametrize("hard", [(1.0, 0.1), (2.0, 0.05)])
def test_hn_values_equal_hand(hard):
    feats = features(4, 3, seed=9)
    assert close(a_infonce(feats, (False, False, True), hard_negatives=hard), Hand(feats).loss((False, False, True), hard=hard))


def test_iphn_values_equal_hand():
    feats = features(3, 4, seed=10)
    adversarial = (True, False, False, False)
    expected = Hand(feats).loss(adversarial, alpha=0.2, w=0.7, hard=(1.0, 0.1), scale=T / 0.07)
    got = a_infonce(feats, adversarial, alpha=0.2, adv_weight=0.7, hard_negatives=(1.0, 0.1), scale=T / 0.07)
    assert close(got, expected)


def test_hn_clamp_floor_is_used_when_active():
    feats = features(3, 2, seed=11)
    hard = (1.0, 0.95)  # a large τ⁺ drives the estimate below the floor
    assert close(a_infonce(feats, (False, False), hard_negatives=hard), Hand(feats).loss((False, False), hard=hard))


def _negative_weights(beta: float) -> torch.Tensor:
    """Weights the anchor's gradient puts on each negative, read off orthogonal axes.

    Instance 0: anchor = normalise(e0 + 0.8 e1 + 0.3 e2 + 0.1 e3), positive = e0; instances
    1-3 lie on e1, e2, e3 (both views). With detach_contrast the anchor's gradient is
    −(1/T)·[z_p − Σ_k c_k z_k]/…, so its component on e_k is proportional to c_k.
    """
    eye = torch.eye(4)
    anchor = F.normalize(eye[0] + 0.8 * eye[1] + 0.3 * eye[2] + 0.1 * eye[3], dim=0)
    feats = torch.stack([torch.stack([anchor, eye[0]])] + [torch.stack([eye[k], eye[k]]) for k in (1, 2, 3)])
    leaf = feats.clone().requires_grad_(True)
    a_infonce(leaf, (False, False), hard_negatives=(beta, 0.0), detach_contrast=True).backward()
    weights = leaf.grad[0, 0][1:]
    assert weights[0] > 0  # pushing the hardest negative away always lowers the loss
    return weights / weights.abs().sum()  # easier negatives may get negative weight when β > 0


def test_larger_beta_raises_the_hardest_negatives_gradient_share():
    shares = [float(_negative_weights(beta)[0]) for beta in (0.0, 0.5, 1.0)]
    assert shares[0] < shares[1] < shares[2]


# ------------------------------------------------------------------ released code (quirks="official")


def official_advcl_hand(feats, alpha, w, hard, scale):
    """Loops over the released ``ori_SupConLoss`` / ``SupConLoss`` arithmetic (A-InfoNCE b28763e)."""
    z = feats.double().numpy()
    batch, views = z.shape[:2]
    nodes = [(i, v) for v in range(views) for i in range(batch)]
    n = len(nodes)
    s = np.array([[np.dot(z[a], z[b]) / T for b in nodes] for a in nodes])
    shifted = s - s.max(axis=1, keepdims=True)
    pos = np.array([[1.0 if a[0] == b[0] and a != b else 0.0 for b in nodes] for a in nodes])
    if hard is None:
        entry = np.zeros((n, n))
        for u in range(n):
            denominator = sum(math.exp(shifted[u, k]) for k in range(n) if k != u)
            for k in range(n):
                entry[u, k] = -(shifted[u, k] - math.log(denominator))
    else:
        beta, tau = hard
        e = np.exp(shifted)
        neg = np.array([[e[u, k] if nodes[u][0] != nodes[k][0] else 0.0 for k in range(n)] for u in range(n)])
        imp = np.exp(beta * np.log(neg + 1e-9))
        row_mean = imp.mean(axis=1)
        big_n = (batch - 1) * views
        pos_mean = [sum(e[u, k] * pos[u, k] for k in range(n)) / pos[u].sum() for u in range(n)]
        ng = []
        for u in range(n):
            reweighted = sum(imp[u, k] * neg[u, k] / row_mean[k] for k in range(n))  # column-k mean (quirk)
            ng.append(max((-tau * big_n * pos_mean[u] + reweighted) / (1 - tau), big_n * math.exp(-2)))
        entry = np.array([[-math.log(e[u, p] / (pos_mean[p] + ng[p])) for p in range(n)] for u in range(n)])
    loss = pos * entry
    mix = loss.copy()
    top = loss[:batch, batch:].copy()
    if alpha is None:
        mix[:batch, batch:] = top * w
        mix[batch:, :batch] = (top * w).T * w  # released aliasing: w²
    else:
        mixed = alpha * loss[batch:, :batch].T + (1 - alpha) * loss[:batch, batch:]
        mix[:batch, batch:] = mixed * w
        mix[batch:, :batch] = mixed.T * w
    return scale * float(np.mean(mix.sum(axis=1) / pos.sum(axis=1)))


def official_rocl_hand(feats, alpha, w, hard):
    """Loops over the released ``NT_xent`` / ``NT_xent_HN`` arithmetic (Asym-RoCL b28763e)."""
    z = feats.double().numpy()
    batch = z.shape[0]
    rows = [z[i, v] for v in range(3) for i in range(batch)]
    rows = [r / (np.linalg.norm(r) + 1e-8) for r in rows]
    n = 3 * batch
    e = np.array([[math.exp(np.dot(rows[u], rows[k]) / T) for k in range(n)] for u in range(n)])
    same = np.array([[1.0 if u % batch == k % batch and u != k else 0.0 for k in range(n)] for u in range(n)])
    if hard is None:
        off = e * (1 - np.eye(n))
        loss = np.array([[-math.log(off[u, k] / (off[u].sum() + 1e-8) + 1e-8) for k in range(n)] for u in range(n)])
    else:
        beta, tau = hard
        neg = e * (1 - same) * (1 - np.eye(n))
        imp = np.exp(beta * np.log(neg + 1e-9))
        row_mean = imp.mean(axis=1)
        big_n = (batch - 1) * 3
        pos_mean = (e * same).sum(axis=1) / same.sum(axis=1)
        ng = [max((-tau * big_n * pos_mean[u] + sum(imp[u, k] * neg[u, k] / row_mean[k] for k in range(n))) / (1 - tau),
                  big_n * math.exp(-2)) for u in range(n)]
        loss = np.array([[-math.log(e[u, k] / (pos_mean[u] + ng[u])) for k in range(n)] for u in range(n)])
    total = 0.0
    for i in range(batch):
        x1, x2, a = i, batch + i, 2 * batch + i
        total += loss[x1, x2] + loss[x2, x1]
        if alpha is None:
            total += loss[x1, a] + loss[a, x1] + loss[x2, a] + loss[a, x2]
        else:
            total += w * ((loss[x1, a] + loss[x2, a]) * alpha + (loss[a, x1] + loss[a, x2]) * (1 - alpha))
    return total / n


COMBINATIONS = {"plain": (None, None), "ip": (0.2, None), "hn": (None, (1.0, 0.12)), "iphn": (0.3, (1.0, 0.1))}


@pytest.mark.parametrize("kind", list(COMBINATIONS))
def test_official_advcl_matches_released_arithmetic(kind):
    alpha, hard = COMBINATIONS[kind]
    feats = features(3, 4, seed=12)
    for w in (1.0, 1.2):
        expected = official_advcl_hand(feats, alpha, w, hard, T / 0.07)
        got = a_infonce(feats, (True, False, False, False), alpha=alpha, adv_weight=w, hard_negatives=hard,
                        scale=T / 0.07, quirks="official")
        assert close(got, expected, 1e-4), (kind, w)


def test_official_advcl_baseline_differs_from_formula_when_w_is_not_one():
    feats = features(3, 4, seed=13)
    formula = a_infonce(feats, (True, False, False, False), adv_weight=1.5)
    official = a_infonce(feats, (True, False, False, False), adv_weight=1.5, quirks="official")
    assert not close(official, float(formula), 1e-4)


@pytest.mark.parametrize("kind", list(COMBINATIONS))
def test_official_rocl_matches_released_arithmetic(kind):
    alpha, hard = COMBINATIONS[kind]
    feats = features(3, 3, seed=14)
    expected = official_rocl_hand(feats, alpha, 1.0, hard)
    got = a_infonce(feats, (False, False, True), alpha=alpha, hard_negatives=hard, detach_contrast=True,
                    quirks="official")
    assert close(got, expected, 1e-4)


def test_official_rocl_ip_alpha_zero_keeps_clean_gradient_from_clean_pairs_only():
    """Released RoCL-IP with α = 0: the clean→adversarial terms vanish, so clean rows get no
    gradient from the adversarial view; a clean-only pair check rather than a zero check."""
    leaf = features(3, 3, seed=15).requires_grad_(True)
    a_infonce(leaf, (False, False, True), alpha=0.0, detach_contrast=True, quirks="official").backward()
    assert leaf.grad[:, 2].abs().sum() > 0 and leaf.grad[:, :2].abs().sum() > 0


def test_official_rejects_other_layouts():
    with pytest.raises(ValueError, match="quirks='official'.*allowed the AdvCL layout"):
        a_infonce(features(3, 2), (False, True), quirks="official")
    with pytest.raises(ValueError, match="RoCL layout"):
        a_infonce(features(3, 3), (False, False, True), quirks="official")  # RoCL needs detach_contrast


# ------------------------------------------------------------------ validation and adaptive α


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, "alpha=1.5 is invalid"),
        ({"quirks": "paper"}, "quirks='paper' is invalid"),
        ({"hard_negatives": (1.0, 1.0)}, "tau_plus=1.0 is invalid"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        a_infonce(features(3, 2), (False, True), **kwargs)


def test_wrong_adversarial_length_and_shape():
    with pytest.raises(ValueError, match="one bool per view"):
        a_infonce(features(3, 2), (False,))
    with pytest.raises(ValueError, match="allowed \\[B, V, D\\]"):
        a_infonce(torch.zeros(3, 4), (False,))


def test_adaptive_alpha_rule_and_warmup():
    assert adaptive_alpha(2.0, 1.5, 0.4, 0.2) == 0.2
    assert adaptive_alpha(0.3, 1.5, 0.4, 0.2) == 0.5
    assert math.isclose(adaptive_alpha(0.95, 1.5, 0.4, 0.2), 0.2 + 0.3 * 0.55 / 1.1)
    schedule = AdaptiveAlpha(0.2, warmup_epochs=2, d_min=0.4)
    assert schedule.update(0, 1.0, 10) == 0.2 and schedule.update(1, 2.0, 30) == 0.2
    assert math.isclose(schedule.mean_distance, (10 * 1.0 + 30 * 2.0) / 40)
    resumed = AdaptiveAlpha(0.2, 2, 0.4)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.update(2, 1.0, 10) == schedule.update(2, 1.0, 10) == pytest.approx(0.2 + 0.3 * 0.75 / 1.35)
