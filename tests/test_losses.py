"""Numbers and gradient routing of bench.engine.losses, checked against hand loops.

Every expected value is computed here with plain Python loops over pairs of views in
float64 (torch scalars only so that autograd can give the hand gradients), following the
formulas of docs/design.md §3 and, for ``official_advcl_loss``/``official_rocl_loss``, the released
A-InfoNCE code (docs/fidelity.md) re-derived line by line. The functions under test are never used to
produce an expected number.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.engine.losses import (
    AdaptiveAlpha,
    a_infonce,
    adaptive_alpha,
    nt_xent,
)
from bench.engine.released_losses import official_advcl_loss, official_rocl_loss

T = 0.5
ADVCL = (True, False, False, False)
ROCL = (False, False, True)


# ---------------------------------------------------------------------------- data


def make_features(
    batch: int = 3, views: int = 4, dim: int = 6, seed: int = 0, spread: float = 0.6, normalise: bool = True
) -> torch.Tensor:
    """[B, V, D] float64 leaf: views of an instance scattered around a common direction."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn(batch, 1, dim, generator=generator, dtype=torch.float64)
    features = centre + spread * torch.randn(batch, views, dim, generator=generator, dtype=torch.float64)
    if normalise:
        features = features / features.norm(dim=-1, keepdim=True)
    return features.requires_grad_(True)


def rows_of(features: torch.Tensor) -> list[tuple[int, int]]:
    """(instance, view) of each row, view-major, as the losses lay them out."""
    batch, views = features.shape[:2]
    return [(i, v) for v in range(views) for i in range(batch)]


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(x * y for x, y in zip(a, b, strict=True))


def gradient(loss: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, features)
    return grad


def assert_same(actual: torch.Tensor, expected: torch.Tensor, features: torch.Tensor, tol: float = 1e-10) -> None:
    """Same value and same gradient with respect to ``features``."""
    assert actual.item() == pytest.approx(expected.item(), rel=tol, abs=tol)
    torch.testing.assert_close(gradient(actual, features), gradient(expected, features), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------- hand formulas (docs/design.md §3)


def hand_ell(features, u, p, temperature=T, hard_negatives=None, stop=False, clamp_log=None):
    """ℓ(u→p), or ℓ_HN with hard_negatives=(β, τ⁺); stop=True detaches every z_k, k ≠ u."""
    rows = rows_of(features)
    anchor = features[rows[u]]
    source = features.detach() if stop else features
    e = {k: torch.exp(dot(anchor, source[rows[k]]) / temperature) for k in range(len(rows)) if k != u}
    if hard_negatives is None:
        return -torch.log(e[p] / sum(e.values()))
    beta, tau_plus = hard_negatives
    positives = [k for k in e if rows[k][0] == rows[u][0]]
    negatives = [k for k in e if rows[k][0] != rows[u][0]]
    count = len(negatives)
    pos_mean = sum(e[k] for k in positives) / len(positives)
    mean_importance = sum(e[k] ** beta for k in negatives) / count
    weighted = sum(e[k] ** beta / mean_importance * e[k] for k in negatives)
    estimate = (weighted - tau_plus * count * pos_mean) / (1 - tau_plus)
    floor = count * math.exp(-1 / temperature)
    if clamp_log is not None:
        clamp_log.append(estimate.item() < floor)
    negative_term = estimate if estimate.item() >= floor else estimate * 0 + floor
    return -torch.log(e[p] / (pos_mean + negative_term))


def hand_a_infonce(
    features,
    adversarial,
    temperature=T,
    alpha=None,
    w=1.0,
    hard_negatives=None,
    detach=False,
    scale=1.0,
    clamp_log=None,
):
    """L = scale · mean_u mean_{p∈P(u)} c(u, p), pair by pair."""
    rows = rows_of(features)

    def ell(u, p, stop):
        return hand_ell(features, u, p, temperature, hard_negatives, stop, clamp_log)

    anchor_means = []
    for u, (instance, view) in enumerate(rows):
        terms = []
        for p, (other_instance, other_view) in enumerate(rows):
            if p == u or other_instance != instance:
                continue
            if adversarial[view] == adversarial[other_view]:
                terms.append(ell(u, p, detach))
            elif alpha is None:
                terms.append(w * ell(u, p, detach))
            else:
                clean, adv = (p, u) if adversarial[view] else (u, p)
                terms.append(w * (alpha * ell(clean, adv, True) + (1 - alpha) * ell(adv, clean, True)))
        anchor_means.append(sum(terms) / len(terms))
    return scale * sum(anchor_means) / len(anchor_means)


def hand_supcon(features, temperature=T) -> float:
    """Unsupervised SupCon / NT-Xent with plain floats: −mean_u mean_p log softmax."""
    vectors = [features[i, v].tolist() for v in range(features.shape[1]) for i in range(features.shape[0])]
    instance = [i for v in range(features.shape[1]) for i in range(features.shape[0])]
    total = 0.0
    for u, zu in enumerate(vectors):
        sims = [sum(a * b for a, b in zip(zu, zk, strict=True)) / temperature for zk in vectors]
        log_denominator = math.log(sum(math.exp(s) for k, s in enumerate(sims) if k != u))
        positives = [k for k in range(len(vectors)) if k != u and instance[k] == instance[u]]
        total += sum(log_denominator - sims[k] for k in positives) / len(positives)
    return total / len(vectors)


# ---------------------------------------------------------------------------- symmetric / SimCLR


def test_symmetric_equals_supcon_by_hand():
    features = make_features(batch=3, views=4)
    loss = a_infonce(features, ADVCL)
    assert loss.item() == pytest.approx(hand_supcon(features), rel=1e-12)
    assert_same(a_infonce(features, ADVCL), hand_a_infonce(features, ADVCL), features)


def test_two_clean_views_are_simclr():
    features = make_features(batch=4, views=2, seed=1)
    expected = hand_supcon(features)
    assert a_infonce(features, (False, False)).item() == pytest.approx(expected, rel=1e-12)
    # One adversarial view, no IP/HN, w = 1: the clean/adversarial pair is a plain SimCLR pair.
    assert a_infonce(features, (False, True)).item() == pytest.approx(expected, rel=1e-12)
    assert_same(a_infonce(features, (False, True)), hand_a_infonce(features, (False, False)), features)
    assert nt_xent(features[:, 0], features[:, 1]).item() == pytest.approx(expected, rel=1e-12)
    assert_same(
        nt_xent(features[:, 0], features[:, 1], temperature=0.2),
        hand_a_infonce(features, (False, False), temperature=0.2),
        features,
    )


def test_symmetric_adversarial_weight_and_scale():
    features = make_features(batch=3, views=3, seed=2)
    loss = a_infonce(features, ROCL, adv_weight=1.7, scale=0.5 / 0.07)
    assert_same(loss, hand_a_infonce(features, ROCL, w=1.7, scale=0.5 / 0.07), features)


# ---------------------------------------------------------------------------- inferior positives


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("w", [0.7, 1.5])
def test_inferior_positive_values_and_gradients(alpha, w):
    flags = (True, False, False, True)  # adversarial/adversarial, clean/clean and mixed pairs
    features = make_features(batch=3, views=4, seed=3)
    loss = a_infonce(features, flags, alpha=alpha, adv_weight=w)
    assert_same(loss, hand_a_infonce(features, flags, alpha=alpha, w=w), features)


def test_inferior_positive_with_tensor_alpha_and_detached_contrast():
    features = make_features(batch=3, views=3, seed=4)
    alpha = torch.tensor(0.35)  # float32, as a schedule on the device would give it
    loss = a_infonce(features, ROCL, alpha=alpha, adv_weight=1.2, detach_contrast=True)
    assert_same(loss, hand_a_infonce(features, ROCL, alpha=alpha.item(), w=1.2, detach=True), features)


@pytest.mark.parametrize("hard_negatives", [None, (1.0, 0.1)])
def test_inferior_positive_gradient_routing(hard_negatives):
    """V=2, one clean and one adversarial view: every positive pair is adversarial/clean."""
    features = make_features(batch=4, views=2, seed=5)
    flags = (False, True)
    for alpha, silent, active in ((0.0, 0, 1), (1.0, 1, 0)):
        grad = gradient(a_infonce(features, flags, alpha=alpha, hard_negatives=hard_negatives), features)
        assert grad[:, silent].abs().max().item() < 1e-14, f"alpha={alpha}: view {silent} got gradient"
        assert grad[:, active].abs().max().item() > 1e-3, f"alpha={alpha}: view {active} got none"
    mixed = gradient(a_infonce(features, flags, alpha=0.2, hard_negatives=hard_negatives), features)
    assert mixed[:, 0].abs().max().item() > 1e-3 and mixed[:, 1].abs().max().item() > 1e-3


def test_half_alpha_is_the_symmetric_stop_gradient_average():
    features = make_features(batch=4, views=2, seed=6)
    flags = (False, True)
    batch = features.shape[0]

    def expected():
        return (
            sum(
                0.5 * (hand_ell(features, i, batch + i, stop=True) + hand_ell(features, batch + i, i, stop=True))
                for i in range(batch)
            )
            / batch
        )

    assert_same(a_infonce(features, flags, alpha=0.5), expected(), features)
    assert_same(a_infonce(features, flags, alpha=0.5), a_infonce(features, flags, detach_contrast=True), features)
    # and it is not the full-gradient symmetric loss (same value, other gradient)
    full = gradient(a_infonce(features, flags), features)
    assert (full - gradient(expected(), features)).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------- hard negatives


def test_hard_negatives_reduce_to_mean_positive_infonce():
    """β=0, τ⁺=0: ℓ_HN(u→p) = −log(e_up / (mean_P e + Σ_neg e)); the clamp cannot bind."""
    features = make_features(batch=3, views=3, seed=7)
    rows = rows_of(features)
    terms = []
    for u, (instance, _) in enumerate(rows):
        e = {k: torch.exp(dot(features[rows[u]], features[rows[k]]) / T) for k in range(len(rows)) if k != u}
        positives = [k for k in e if rows[k][0] == instance]
        denominator = sum(e[k] for k in positives) / len(positives) + sum(e[k] for k in e if k not in positives)
        terms.append(sum(-torch.log(e[p] / denominator) for p in positives) / len(positives))
    expected = sum(terms) / len(terms)
    assert_same(a_infonce(features, ROCL, hard_negatives=(0.0, 0.0)), expected, features)
    pair = make_features(batch=4, views=2, seed=8)
    assert a_infonce(pair, (False, True), hard_negatives=(0.0, 0.0)).item() == pytest.approx(hand_supcon(pair))


@pytest.mark.parametrize("alpha", [None, 0.3])
@pytest.mark.parametrize("hard_negatives", [(1.0, 0.1), (2.0, 0.3), (0.5, 0.9)])
def test_hard_negative_values_and_gradients(alpha, hard_negatives):
    features = make_features(batch=3, views=3, seed=9, spread=0.9)
    clamp_log: list[bool] = []
    expected = hand_a_infonce(features, ROCL, alpha=alpha, w=1.3, hard_negatives=hard_negatives, clamp_log=clamp_log)
    loss = a_infonce(features, ROCL, alpha=alpha, adv_weight=1.3, hard_negatives=hard_negatives)
    assert_same(loss, expected, features)
    if hard_negatives[1] == 0.9:
        assert any(clamp_log), "this case is meant to exercise the floor"
    else:
        assert not all(clamp_log)


def test_hard_negatives_with_detached_contrast():
    features = make_features(batch=3, views=3, seed=10)
    loss = a_infonce(features, ROCL, hard_negatives=(1.0, 0.12), detach_contrast=True)
    assert_same(loss, hand_a_infonce(features, ROCL, hard_negatives=(1.0, 0.12), detach=True), features)


def negative_gradient_shares(beta: float) -> tuple[float, list[float], list[float]]:
    """Anchor z_0 over orthonormal negatives: grad_z0 · e_k isolates ∂L/∂s_0k (contrast detached)."""
    batch, dim = 4, 8
    basis = torch.eye(dim, dtype=torch.float64)
    features = torch.zeros(batch, 2, dim, dtype=torch.float64)
    features[0, 1] = basis[0]  # the positive
    negatives = [(i, v) for i in range(1, batch) for v in range(2)]
    for k, (i, v) in enumerate(negatives):
        features[i, v] = basis[k + 1]
    cosines = [0.6, 0.3, 0.1, -0.1, -0.2, -0.3]  # the first negative is the hardest
    anchor = 0.3 * basis[0] + sum(c * basis[k + 1] for k, c in enumerate(cosines))
    features[0, 0] = anchor / anchor.norm()
    features.requires_grad_(True)
    loss = a_infonce(features, (False, False), hard_negatives=(beta, 0.0), detach_contrast=True)
    grad = gradient(loss, features)[0, 0]
    pulls = [grad[k + 1].item() for k in range(len(negatives))]
    sims = [dot(features[0, 0], features[i, v]).item() for i, v in negatives]
    return pulls[0] / sum(pulls), pulls, sims


def test_larger_beta_weighs_the_hardest_negative_more():
    share0, pulls0, sims = negative_gradient_shares(0.0)
    assert all(p > 0 for p in pulls0)
    weights = [math.exp(s / T) for s in sims]  # β=0: pull ∝ e_k (plain InfoNCE softmax)
    assert share0 == pytest.approx(weights[0] / sum(weights), rel=1e-9)
    share1, _, _ = negative_gradient_shares(1.0)
    share2, _, _ = negative_gradient_shares(2.0)
    assert share0 < share1 < share2, (share0, share1, share2)


# ---------------------------------------------------------------------------- detach_contrast


@pytest.mark.parametrize("kwargs", [{}, {"hard_negatives": (1.0, 0.1)}, {"alpha": 0.3, "adv_weight": 0.8}])
def test_detached_contrast_sends_gradient_only_to_anchors(kwargs):
    """Row-wise construction: the gradient on z_u is that of u's own row with the rest frozen."""
    features = make_features(batch=3, views=3, seed=11)
    grad = gradient(a_infonce(features, ROCL, detach_contrast=True, **kwargs), features)
    rows = rows_of(features)
    hard_negatives, alpha, w = kwargs.get("hard_negatives"), kwargs.get("alpha"), kwargs.get("adv_weight", 1.0)
    for u, (instance, view) in enumerate(rows):
        leaf = features.detach()[instance, view].clone().requires_grad_(True)
        frozen = features.detach().clone()
        frozen[instance, view] = leaf  # only z_u is live: the row's own gradient
        total = 0.0
        for p, (other, other_view) in enumerate(rows):
            if p == u or other != instance:
                continue
            ell = hand_ell(frozen, u, p, hard_negatives=hard_negatives)
            cross = ROCL[view] != ROCL[other_view]
            if cross and alpha is not None:
                # c(u, p) = c(p, u) both hold the one u-anchored term ℓ^sg(u→p): it counts twice
                ell = 2 * w * (alpha if not ROCL[view] else 1 - alpha) * ell
            total = total + ell / 2
        (expected,) = torch.autograd.grad(total / len(rows), leaf)
        torch.testing.assert_close(grad[instance, view], expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- numerics


def test_half_inputs_are_computed_in_float32():
    features = make_features(batch=3, views=4, seed=12).detach()
    half = features.half()
    loss = a_infonce(half, ADVCL, alpha=0.2, hard_negatives=(1.0, 0.1))
    assert loss.dtype == torch.float32
    expected = hand_a_infonce(half.double(), ADVCL, alpha=0.2, hard_negatives=(1.0, 0.1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("hard_negatives", [None, (1.0, 0.1)])
def test_small_temperature_is_stable_in_float32(hard_negatives):
    features = make_features(batch=3, views=2, seed=13, spread=0.3)
    temperature = 0.01  # exp(1/T) and exp((β+1)/T) overflow float32
    loss = a_infonce(features.detach().float(), (False, True), temperature=temperature, hard_negatives=hard_negatives)
    expected = hand_a_infonce(features, (False, True), temperature=temperature, hard_negatives=hard_negatives)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


# ---------------------------------------------------------------------------- official quirks (hand loops)


def hand_official_advcl(features, temperature, alpha, w, hard_negatives, scale, clamp_log=None):
    """Released ``ori_SupConLoss`` / ``SupConLoss`` (Asym-AdvCL), re-derived pair by pair."""
    rows = rows_of(features)
    n, batch = len(rows), features.shape[0]
    count = (batch - 1) * 4

    def logits(u, stop):
        source = features.detach() if stop else features
        raw = [dot(features[rows[u]], source[rows[k]]) / temperature for k in range(n)]
        top = max(r.item() for r in raw)  # detached row max, self included
        return [r - top for r in raw]

    def matrix(stop):
        shifted = [logits(u, stop) for u in range(n)]
        if hard_negatives is None:
            return [
                [torch.log(sum(torch.exp(shifted[u][j]) for j in range(n) if j != u)) - shifted[u][k] for k in range(n)]
                for u in range(n)
            ]
        beta, tau_plus = hard_negatives
        e = [[torch.exp(x) for x in row] for row in shifted]
        negative = [[rows[k][0] != rows[u][0] for k in range(n)] for u in range(n)]
        pos = [sum(e[u][k] for k in range(n) if k != u and not negative[u][k]) / 3 for u in range(n)]
        ng = hand_official_ng(e, negative, pos, count, beta, tau_plus, clamp_log)
        return [[-torch.log(e[u][k] / (pos[k] + ng[k])) for k in range(n)] for u in range(n)]  # column k: row k's

    full = matrix(False)
    stopped = matrix(True) if alpha is not None else None
    total = 0.0
    for u, (instance, view) in enumerate(rows):
        anchor_sum = 0.0
        for p, (other, other_view) in enumerate(rows):
            if p == u or other != instance:
                continue
            if view != 0 and other_view != 0:
                anchor_sum = anchor_sum + full[u][p]
            elif alpha is None:
                adv, clean = (u, p) if view == 0 else (p, u)
                anchor_sum = anchor_sum + (w if view == 0 else w * w) * full[adv][clean]
            else:
                adv, clean = (u, p) if view == 0 else (p, u)
                anchor_sum = anchor_sum + w * (alpha * stopped[clean][adv] + (1 - alpha) * stopped[adv][clean])
        total = total + anchor_sum / 3
    return scale * total / n


def hand_official_ng(e, negative, pos, count, beta, tau_plus, clamp_log=None) -> list:
    """Released HCL negative term per row u, pair by pair: importance (neg + 1e-9)^β over the whole
    row, column k divided by row k's mean importance, floor N·e^{-1/0.5}."""
    n = len(e)
    imp = [
        [torch.exp(beta * torch.log((e[u][k] if negative[u][k] else 0 * e[u][k]) + 1e-9)) for k in range(n)]
        for u in range(n)
    ]
    mean_imp = [sum(imp[k]) / n for k in range(n)]  # the released code divides column k by row k's mean
    floor = count * math.e ** (-1 / 0.5)
    ng = []
    for u in range(n):
        value = (
            -tau_plus * count * pos[u] + sum(imp[u][k] * e[u][k] / mean_imp[k] for k in range(n) if negative[u][k])
        ) / (1 - tau_plus)
        if clamp_log is not None:
            clamp_log.append(value.item() < floor)
        ng.append(value if value.item() >= floor else value * 0 + floor)
    return ng


def hand_official_rocl(features, temperature, alpha, w, hard_negatives, scale, clamp_log=None):
    """Released ``NT_xent`` / ``NT_xent_HN`` (Asym-RoCL, 'Rep'), re-derived pair by pair."""
    rows = rows_of(features)
    n, batch = len(rows), features.shape[0]
    normed = [features[r] / (torch.sqrt(dot(features[r], features[r])) + 1e-8) for r in rows]
    e = [[torch.exp(dot(normed[u], normed[k].detach()) / temperature) for k in range(n)] for u in range(n)]
    if hard_negatives is None:
        ell = [
            [-torch.log(e[u][k] / (sum(e[u][j] for j in range(n) if j != u) + 1e-8) + 1e-8) for k in range(n)]
            for u in range(n)
        ]
    else:
        beta, tau_plus = hard_negatives
        count = (batch - 1) * 3
        negative = [[rows[k][0] != rows[u][0] for k in range(n)] for u in range(n)]
        pos = [sum(e[u][k] for k in range(n) if k != u and not negative[u][k]) / 2 for u in range(n)]
        ng = hand_official_ng(e, negative, pos, count, beta, tau_plus, clamp_log)
        ell = [[-torch.log(e[u][k] / (pos[u] + ng[u])) for k in range(n)] for u in range(n)]  # row-wise division
    total = 0.0
    for i in range(batch):
        x1, x2, a = i, batch + i, 2 * batch + i
        total = total + ell[x1][x2] + ell[x2][x1]
        if alpha is None:
            total = total + ell[x1][a] + ell[a][x1] + ell[x2][a] + ell[a][x2]
        else:
            total = total + w * (alpha * (ell[x1][a] + ell[x2][a]) + (1 - alpha) * (ell[a][x1] + ell[a][x2]))
    return scale * total / n


OFFICIAL_CASES = {
    # name: (alpha, w, hard_negatives); w ≠ 1 without IP exercises AdvCL's w² aliasing
    "plain": (None, 1.5, None),
    "ip": (0.2, 0.7, None),
    "hn": (None, 1.2, (1.0, 0.12)),
    "iphn": (0.3, 1.5, (1.0, 0.01)),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_official_advcl_matches_hand_loop(case):
    alpha, w, hard_negatives = OFFICIAL_CASES[case]
    features = make_features(batch=3, views=4, seed=15)
    scale = 0.5 / 0.07
    loss = official_advcl_loss(
        features, temperature=T, alpha=alpha, adv_weight=w, hard_negatives=hard_negatives, scale=scale
    )
    clamp_log: list[bool] = []
    assert_same(loss, hand_official_advcl(features, T, alpha, w, hard_negatives, scale, clamp_log), features)
    if hard_negatives is not None:
        assert any(clamp_log) and not all(clamp_log), "both sides of the released floor should be exercised"


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_official_rocl_matches_hand_loop(case):
    alpha, w, hard_negatives = OFFICIAL_CASES[case]
    features = make_features(batch=3, views=3, seed=15, normalise=False)  # the code re-normalises
    loss = official_rocl_loss(features, temperature=T, alpha=alpha, adv_weight=w, hard_negatives=hard_negatives)
    clamp_log: list[bool] = []
    assert_same(loss, hand_official_rocl(features, T, alpha, w, hard_negatives, 1.0, clamp_log), features)
    if hard_negatives is not None:
        assert any(clamp_log) and not all(clamp_log), "both sides of the released floor should be exercised"


def test_official_advcl_baseline_differs_from_the_formulas():
    """The replaced clean-anchor terms (and w²) make the released AdvCL loss differ from SupCon."""
    features = make_features(batch=3, views=4, seed=16)
    official = official_advcl_loss(features).item()
    assert official == pytest.approx(hand_official_advcl(features, T, None, 1.0, None, 1.0).item(), rel=1e-12)
    assert abs(official - hand_supcon(features)) > 1e-4


@pytest.mark.parametrize(
    "loss, views, allowed",
    [
        (official_advcl_loss, 3, r"\[B, 4, D\].*x_adv, x1, x2, HFC"),
        (official_advcl_loss, 2, r"\[B, 4, D\]"),
        (official_rocl_loss, 4, r"\[B, 3, D\].*x1, x2, a"),
        (official_rocl_loss, 2, r"\[B, 3, D\]"),
    ],
)
def test_official_losses_reject_other_view_counts(loss, views, allowed):
    """Each released loss has one fixed view order: any other number of views is an error."""
    features = make_features(batch=3, views=views)
    with pytest.raises(ValueError, match=rf"features.shape=\(3, {views}, 6\) is invalid: allowed {allowed}"):
        loss(features)


@pytest.mark.parametrize("loss, views", [(official_advcl_loss, 4), (official_rocl_loss, 3)])
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"hard_negatives": (1.0, 1.0)}, r"tau_plus=1.0.*\[0, 1\)"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"adv_weight": -2.0}, "adv_weight=-2.0"),
        ({"scale": float("inf")}, "scale=inf"),
    ],
)
def test_official_losses_check_their_arguments(loss, views, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss(make_features(batch=3, views=views), **kwargs)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"alpha": torch.tensor([0.2, 0.3])}, r"alpha of shape \(2,\)"),
        ({"hard_negatives": (1.0, 1.0)}, r"tau_plus=1.0.*\[0, 1\)"),
        ({"hard_negatives": (-1.0, 0.1)}, "beta=-1.0"),
        ({"hard_negatives": (1.0,)}, r"hard_negatives=\(1.0,\)"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"adv_weight": -2.0}, "adv_weight=-2.0"),
        ({"scale": float("nan")}, "scale=nan"),
        ({"detach_contrast": "yes"}, "detach_contrast='yes'"),
    ],
)
def test_bad_arguments_raise_with_the_value(kwargs, message):
    features = make_features(batch=3, views=3)
    with pytest.raises(ValueError, match=message):
        a_infonce(features, ROCL, **kwargs)


def test_bad_shapes_raise_with_the_value():
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        a_infonce(torch.randn(3, 6), ROCL)
    with pytest.raises(ValueError, match=r"adversarial=\(True, False\).*V=3"):
        a_infonce(make_features(batch=3, views=3), (True, False))
    with pytest.raises(ValueError, match=r"\(1, 3, 6\)"):
        a_infonce(make_features(batch=1, views=3), ROCL)
    with pytest.raises(ValueError, match=r"z1.shape=\(3, 6\), z2.shape=\(4, 6\)"):
        nt_xent(torch.randn(3, 6), torch.randn(4, 6))


# ---------------------------------------------------------------------------- adaptive α


@pytest.mark.parametrize(
    "d, expected",
    [
        (1.5, 0.2),  # above D̄: α₀
        (1.0, 0.2),  # at D̄: the ramp starts at α₀
        (0.7, 0.2 + 0.3 * 0.3 / 0.6),  # on the ramp
        (0.4, 0.5),  # at d_min: the ramp ends at 0.5
        (0.1, 0.5),  # below d_min
    ],
)
def test_adaptive_alpha_rule(d, expected):
    assert adaptive_alpha(d, 1.0, 0.4, 0.2) == pytest.approx(expected, rel=1e-12)


def test_adaptive_alpha_warm_up_freeze_and_resume():
    schedule = AdaptiveAlpha(alpha0=0.3, warmup_epochs=2, d_min=0.5)
    assert schedule.update(0, 2.0, batch_size=10) == 0.3
    assert schedule.update(0, 1.0, batch_size=30) == 0.3
    state = schedule.state_dict()
    resumed = AdaptiveAlpha(alpha0=0.3, warmup_epochs=2, d_min=0.5)
    resumed.load_state_dict(state)
    for current in (schedule, resumed):
        assert current.update(1, 0.25, batch_size=40) == 0.3  # still warm-up: D̄ = (20 + 30 + 10) / 80
        d_bar = (2.0 * 10 + 1.0 * 30 + 0.25 * 40) / 80
        assert current.update(2, 0.6, batch_size=99) == pytest.approx(0.3 + 0.2 * (d_bar - 0.6) / (d_bar - 0.5))
        assert current.update(2, 5.0, batch_size=7) == 0.3
        assert current.update(3, 0.1, batch_size=7) == 0.5
        assert current.mean_distance == pytest.approx(d_bar)  # frozen after warm-up


def test_adaptive_alpha_without_warm_up_keeps_alpha0():
    schedule = AdaptiveAlpha(alpha0=0.2, warmup_epochs=0, d_min=0.4)
    assert [schedule.update(epoch, 0.1, 8) for epoch in range(3)] == [0.2, 0.2, 0.2]


@pytest.mark.parametrize(
    "args, message",
    [
        ((1.2, 3, 0.4), "alpha0=1.2"),
        ((0.2, -1, 0.4), "warmup_epochs=-1"),
        ((0.2, 3, -0.4), "d_min=-0.4"),
    ],
)
def test_adaptive_alpha_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveAlpha(*args)
    with pytest.raises(ValueError, match="batch_size=0"):
        AdaptiveAlpha(0.2, 1, 0.4).update(0, 1.0, batch_size=0)
