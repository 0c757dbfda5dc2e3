"""Contrastive losses: SimCLR's NT-Xent and the asymmetric InfoNCE of A-InfoNCE.

References: Chen et al. 2020 (SimCLR, NT-Xent); Yu et al., "Adversarial Contrastive Learning
via Asymmetric InfoNCE", ECCV 2022 (A-InfoNCE: inferior positives and hard negatives);
Robinson et al. 2021 (HCL, the hard-negative estimator A-InfoNCE adopts). The formulas
implemented are those of docs/design.md §3 (``a_infonce``); the released code's arithmetic, with its
deviations from them, is reproduced by ``official_advcl_loss`` and ``official_rocl_loss``, which
AdvCL and RoCL call by name when their parameter ``quirks`` is 'official'
(docs/fidelity.md).

Notation: z are L2-normalised projections, T the temperature, s_uv = z_u·z_v,
ℓ(u→p) = −log(exp(s_up/T) / Σ_{k≠u} exp(s_uk/T)), and ℓ^sg(u→p) the same with every z_k
(k≠u) detached, so that its gradient reaches only the anchor z_u. Views of one instance are
positives of each other; every view of every other instance is a negative.

Row layout used internally: the [B, V, D] features are flattened view-major, so row
u = v·B + i holds view v of instance i (the layout of the released code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F

# The released HN losses hard-code 0.5 as the temperature of their clamp floor N·e^{-1/0.5}.
OFFICIAL_CLAMP_TEMPERATURE = 0.5
# The view order of each released loss (True = adversarial).
ADVCL_VIEWS = (True, False, False, False)  # [x_adv, x1, x2, HFC], full gradient
ROCL_VIEWS = (False, False, True)  # [x1, x2, a], every column detached


# ---------------------------------------------------------------------------- NT-Xent


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent for two aligned [B, D] batches of L2-normalised projections.

    Row i of ``z1`` and row i of ``z2`` are the two views of instance i. The loss is the
    mean over the 2B anchors of ℓ(u→p), p the other view of u's instance, with every other
    one of the 2B − 1 embeddings in the denominator (Chen et al. 2020, eq. 1). Used by
    SimCLR and ACL, and as an attack objective. Computed in at least float32.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        shapes = f"z1.shape={tuple(z1.shape)}, z2.shape={tuple(z2.shape)}"
        raise ValueError(f"{shapes} are invalid: allowed two tensors of the same [B, D] shape")
    _check_positive("temperature", temperature)
    z = torch.cat([z1, z2]).to(_compute_dtype(z1.dtype))
    batch = z1.shape[0]
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    partner = torch.arange(2 * batch, device=z.device).roll(batch)
    return F.cross_entropy(logits, partner)


# ---------------------------------------------------------------------------- A-InfoNCE


def a_infonce(
    features: torch.Tensor,
    adversarial: Sequence[bool],
    *,
    temperature: float = 0.5,
    alpha: float | torch.Tensor | None = None,
    adv_weight: float = 1.0,
    hard_negatives: tuple[float, float] | None = None,
    detach_contrast: bool = False,
    scale: float = 1.0,
) -> torch.Tensor:
    """Asymmetric InfoNCE (Yu et al., ECCV 2022) over [B, V, D] features; docs/design.md §3.

    ``features[i, v]`` is the normalised projection of view v of instance i and
    ``adversarial[v]`` says whether view v is adversarial. The loss is
    L = scale · mean over all B·V anchors u of (mean over u's V−1 positives p of c(u, p)):
    - same-kind pairs (clean/clean, adversarial/adversarial): c(u, p) = ℓ(u→p);
    - adversarial/clean pairs: c(u, p) = w·ℓ(u→p) when ``alpha`` is None; with ``alpha``
      the inferior-positive (IP) form c(a, v) = c(v, a) = w·[α·ℓ^sg(v→a) + (1−α)·ℓ^sg(a→v)]
      (v clean, a adversarial): α is the share of that pair's pull reaching the clean view;
    - ``detach_contrast`` (RoCL) turns every ℓ into ℓ^sg (gradient only to anchors);
    - ``hard_negatives=(β, τ⁺)`` turns every ℓ into the HCL estimator ℓ_HN (see
      ``_hard_negative_terms``), which up-weights negatives by exp(β·s/T) and removes an
      estimated τ⁺ share of false negatives.
    Computed in at least float32 whatever the input dtype (AMP-safe), with row-max shifts.
    The released code's own arithmetic: ``official_advcl_loss``, ``official_rocl_loss``.
    """
    flags = _validate(features, adversarial, temperature, alpha, adv_weight, hard_negatives, detach_contrast, scale)
    alpha = _loss_alpha(alpha, features.dtype)
    batch, views, dim = features.shape
    z = features.transpose(0, 1).reshape(views * batch, dim).to(_compute_dtype(features.dtype))
    positive, negative = _pair_masks(batch, views, z.device)
    anchors, partners = _positive_pairs(batch, views, z.device)
    is_adversarial = torch.tensor(flags, device=z.device).repeat_interleave(batch)
    cross = is_adversarial[anchors] != is_adversarial[partners]

    def terms(contrast: torch.Tensor) -> torch.Tensor:
        return _pair_terms(z, contrast, positive, negative, temperature, hard_negatives)

    full = terms(z.detach() if detach_contrast else z)
    pair = full[anchors, partners]
    if alpha is None:
        pair = torch.where(cross, adv_weight * pair, pair)
    else:
        stopped = full if detach_contrast else terms(z.detach())
        forward, backward = stopped[anchors, partners], stopped[partners, anchors]  # ℓ^sg(u→p), ℓ^sg(p→u)
        from_clean = torch.where(is_adversarial[anchors], backward, forward)  # ℓ^sg(v→a)
        from_adversarial = torch.where(is_adversarial[anchors], forward, backward)  # ℓ^sg(a→v)
        inferior = adv_weight * (alpha * from_clean + (1 - alpha) * from_adversarial)
        pair = torch.where(cross, inferior, pair)
    return scale * pair.mean()  # every anchor has V−1 positives: the mean of per-anchor means


def _pair_masks(batch: int, views: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [V·B, V·B] masks of positives (same instance, k≠u) and negatives (other instance)."""
    instance = torch.arange(batch, device=device).repeat(views)
    same = instance[:, None] == instance[None, :]
    return same & ~torch.eye(views * batch, dtype=torch.bool, device=device), ~same


def _positive_pairs(batch: int, views: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (u, p) of every ordered positive pair, V−1 per anchor (no device sync)."""
    view_pairs = torch.tensor([(v, w) for v in range(views) for w in range(views) if v != w], device=device)
    instance = torch.arange(batch, device=device)
    return (view_pairs[:, :1] * batch + instance).flatten(), (view_pairs[:, 1:] * batch + instance).flatten()


def _pair_terms(
    z: torch.Tensor,
    contrast: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    temperature: float,
    hard_negatives: tuple[float, float] | None,
) -> torch.Tensor:
    """[n, n] matrix of ℓ(u→k) (or ℓ_HN) for anchor rows z_u against ``contrast`` columns.

    Only entries at positive pairs are meaningful (self entries are +inf). Detaching
    ``contrast`` gives ℓ^sg. Values are those of docs/design.md §3; the row shifts are exact.
    """
    logits = (z @ contrast.T / temperature).masked_fill(~(positive | negative), float("-inf"))
    if hard_negatives is None:
        return torch.logsumexp(logits, dim=1, keepdim=True) - logits
    return _hard_negative_terms(logits, positive, negative, temperature, *hard_negatives)


def _hard_negative_terms(
    logits: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    temperature: float,
    beta: float,
    tau_plus: float,
) -> torch.Tensor:
    """HCL's ℓ_HN(u→k) = −log(e_uk / (pos_u + Ng_u)) for every column k (docs/design.md §3).

    e_uk = exp(s_uk/T); pos_u = mean of e_up over u's positives; imp_uk = e_uk^β / mean over
    u's N negatives of e^β, so Σ_k imp_uk·e_uk = N·Σ e^{β+1} / Σ e^β (two logsumexps);
    Ng_u = max((Σ_k imp_uk·e_uk − τ⁺·N·pos_u) / (1 − τ⁺), N·e^{−1/T}), the floor being "all
    negatives at cosine −1". Every e_u· is divided by exp(max_k s_uk/T); the ratio is exact.
    """
    shift = logits.max(dim=1, keepdim=True).values.detach()
    shifted = logits - shift  # log(e_uk) − shift_u; −inf on the diagonal
    count = negative.sum(dim=1, keepdim=True).to(logits.dtype)
    exp_shifted = shifted.exp()
    pos_mean = torch.where(positive, exp_shifted, 0.0).sum(1, keepdim=True) / positive.sum(1, keepdim=True)
    log_weighted = torch.logsumexp(
        ((beta + 1) * shifted).masked_fill(~negative, float("-inf")), 1, keepdim=True
    ) - torch.logsumexp((beta * shifted).masked_fill(~negative, float("-inf")), 1, keepdim=True)
    estimate = (count * log_weighted.exp() - tau_plus * count * pos_mean) / (1 - tau_plus)
    floor = count * torch.exp(-1.0 / temperature - shift)
    return torch.log(pos_mean + torch.maximum(estimate, floor)) - shifted


# ---------------------------------------------------------------------------- validation


def _loss_alpha(alpha: float | torch.Tensor | None, dtype: torch.dtype) -> float | torch.Tensor | None:
    """A schedule's 0-d tensor α is detached and cast, so 1 − α is computed in the loss's precision."""
    if isinstance(alpha, torch.Tensor):
        return alpha.detach().to(_compute_dtype(dtype))
    return alpha


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: half/bfloat16 inputs (AMP) are promoted, float64 is kept."""
    return torch.promote_types(dtype, torch.float32)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
        raise ValueError(f"{name}={value!r} is invalid: allowed finite numbers > 0")


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 0:
            raise ValueError(f"alpha of shape {tuple(alpha.shape)} is invalid: allowed None, a number or a 0-d tensor")
        value = float(alpha)
    elif isinstance(alpha, Real) and not isinstance(alpha, bool):
        value = float(alpha)
    else:
        raise ValueError(f"alpha={alpha!r} is invalid: allowed None, a number or a 0-d tensor in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha={value} is invalid: allowed None or a value in [0, 1]")


def _check_hard_negatives(hard_negatives: Any) -> None:
    if not isinstance(hard_negatives, (tuple, list)) or len(hard_negatives) != 2:
        raise ValueError(f"hard_negatives={hard_negatives!r} is invalid: allowed None or a pair (beta, tau_plus)")
    beta, tau_plus = hard_negatives
    if isinstance(beta, bool) or not isinstance(beta, Real) or not 0 <= beta < math.inf:
        raise ValueError(f"beta={beta!r} is invalid: allowed finite numbers >= 0")
    if isinstance(tau_plus, bool) or not isinstance(tau_plus, Real) or not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus={tau_plus!r} is invalid: allowed numbers in [0, 1)")


def _validate(
    features: Any,
    adversarial: Any,
    temperature: Any,
    alpha: Any,
    adv_weight: Any,
    hard_negatives: Any,
    detach_contrast: Any,
    scale: Any,
) -> tuple[bool, ...]:
    """Check every argument of ``a_infonce``; return the adversarial flags as bools."""
    if not isinstance(features, torch.Tensor) or features.dim() != 3 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features {shape} is invalid: allowed a floating [B, V, D] tensor")
    batch, views, _ = features.shape
    if batch < 2 or views < 2:
        raise ValueError(f"features.shape={tuple(features.shape)} is invalid: allowed B >= 2 and V >= 2")
    try:
        flags = None if isinstance(adversarial, (str, bytes)) else list(adversarial)
    except TypeError:
        flags = None
    if flags is None or len(flags) != views or not all(isinstance(f, bool) or f in (0, 1) for f in flags):
        raise ValueError(f"adversarial={adversarial!r} is invalid: allowed a sequence of V={views} bools")
    _check_positive("temperature", temperature)
    if alpha is not None:
        _check_alpha(alpha)
    if isinstance(adv_weight, bool) or not isinstance(adv_weight, Real) or not 0 <= adv_weight < math.inf:
        raise ValueError(f"adv_weight={adv_weight!r} is invalid: allowed finite numbers >= 0")
    if hard_negatives is not None:
        _check_hard_negatives(hard_negatives)
    if not isinstance(detach_contrast, bool):
        raise ValueError(f"detach_contrast={detach_contrast!r} is invalid: allowed True or False")
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is invalid: allowed finite numbers")
    return tuple(bool(f) for f in flags)


# ---------------------------------------------------------------------------- released code


def _validate_official(
    features: Any,
    views: tuple[bool, ...],
    names: str,
    temperature: Any,
    alpha: Any,
    adv_weight: Any,
    hard_negatives: Any,
    scale: Any,
) -> None:
    """``_validate`` for a released loss, whose view order is fixed (``names``)."""
    if isinstance(features, torch.Tensor) and features.dim() == 3 and features.shape[1] != len(views):
        raise ValueError(
            f"features.shape={tuple(features.shape)} is invalid: allowed [B, {len(views)}, D] "
            f"(the released loss's views {names})"
        )
    _validate(features, views, temperature, alpha, adv_weight, hard_negatives, False, scale)


def _official_hcl_ratio(
    exp_logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor, count: int, beta: float, tau_plus: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Released HCL block: returns (pos, Ng), one value per row, with the released arithmetic.

    ``count`` = N, the number of negatives per row. imp = exp(β·log(neg + 1e-9)) on the full
    row (≈0 off the negatives), column k divided by the mean importance of *row k*, and the
    floor N·e^{-1/0.5} hard-coded.
    """
    negatives = exp_logits * (1 - positive) * not_self
    pos = (exp_logits * positive).sum(dim=1) / positive.sum(1)
    importance = (beta * (negatives + 1e-9).log()).exp()
    reweighted = importance * negatives / importance.mean(dim=-1)  # broadcast over columns: row k's mean
    ng = (-tau_plus * count * pos + reweighted.sum(dim=-1)) / (1 - tau_plus)
    return pos, torch.clamp(ng, min=count * math.e ** (-1 / OFFICIAL_CLAMP_TEMPERATURE))


def _advcl_log_terms(
    z: torch.Tensor,
    contrast: torch.Tensor,
    positive: torch.Tensor,
    not_self: torch.Tensor,
    temperature: float,
    hard_negatives: tuple[float, float] | None,
    count: int,
) -> torch.Tensor:
    """Positive-masked ℓ matrix of ``ori_SupConLoss`` (plain) or ``SupConLoss`` (HN); N = ``count``."""
    dot = z @ contrast.T / temperature
    logits = dot - dot.max(dim=1, keepdim=True).values.detach()  # self included in the max
    if hard_negatives is None:
        return positive * (torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True)) - logits)
    exp_logits = torch.exp(logits)
    pos, ng = _official_hcl_ratio(exp_logits, positive, not_self, count, *hard_negatives)
    return positive * -torch.log(exp_logits / (pos + ng))  # broadcast: column p uses row p's denominator


def official_advcl_loss(
    features: torch.Tensor,
    *,
    temperature: float = 0.5,
    alpha: float | torch.Tensor | None = None,
    adv_weight: float = 1.0,
    hard_negatives: tuple[float, float] | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """The released AdvCL loss over [B, 4, D] features, views [x_adv, x1, x2, HFC] (view 0 adversarial).

    yqy2001/A-InfoNCE Asym-AdvCL/losses.py (commit b28763e): ``ori_SupConLoss`` without hard
    negatives (also the attack objective of every AdvCL script, ``--attack_ori``), ``SupConLoss``
    with them; α = ``stop_grad_sd``, arguments as ``a_infonce``'s. Quirks reproduced, one line each:
    - logits are shifted by their detached row max over all 4B columns (self included);
    - no IP (stop_grad off): the clean-anchor→adversarial terms are replaced by the transposed
      adversarial-anchor terms ℓ(a→v), so the adversarial anchors' softmax counts twice;
    - no IP: in-place aliasing gives that transposed block weight w² (adversarial rows get w);
    - IP (stop_grad on): both blocks get w·[α·ℓ^sg(v→a) + (1−α)·ℓ^sg(a→v)], no aliasing;
    - HN: importance imp = (neg + 1e-9)^β over the whole row, column k divided by row k's mean;
    - HN: the denominator of entry (u, p) is row p's (pos_p + Ng_p), which leaks the IPHN stop-grad;
    - HN: the floor N·e^{-2} (0.5 hard-coded) acts on max-shifted exponentials: e² above HCL's;
    - HN: pos is the mean of the 3 positives and sits in the denominator;
    - mean over the 4B anchors of the mean over their 3 positives, × ``scale`` (released: T/0.07).
    """
    _validate_official(
        features, ADVCL_VIEWS, "[x_adv, x1, x2, HFC]", temperature, alpha, adv_weight, hard_negatives, scale
    )
    alpha = _loss_alpha(alpha, features.dtype)
    batch, views = features.shape[:2]
    z = torch.cat(torch.unbind(features, dim=1), dim=0).to(_compute_dtype(features.dtype))
    not_self = 1 - torch.eye(views * batch, device=z.device, dtype=z.dtype)
    positive = torch.eye(batch, device=z.device, dtype=z.dtype).repeat(views, views) * not_self
    count = (batch - 1) * views
    full = _advcl_log_terms(z, z, positive, not_self, temperature, hard_negatives, count)
    if alpha is None:
        top = full[:batch, batch:] * adv_weight
        bottom = top.T * adv_weight  # the aliased view already holds w·ℓ: w²
    else:
        stopped = _advcl_log_terms(z, z.detach(), positive, not_self, temperature, hard_negatives, count)
        mixed = alpha * stopped[batch:, :batch].T + (1 - alpha) * stopped[:batch, batch:]
        top, bottom = mixed * adv_weight, mixed.T * adv_weight
    rows = torch.cat([torch.cat([full[:batch, :batch], top], 1), torch.cat([bottom, full[batch:, batch:]], 1)], 0)
    # Released: the scale multiplies each anchor's term before the mean (same float rounding).
    return (scale * (rows.sum(1) / positive.sum(1))).view(views, batch).mean()


def official_rocl_loss(
    features: torch.Tensor,
    *,
    temperature: float = 0.5,
    alpha: float | torch.Tensor | None = None,
    adv_weight: float = 1.0,
    hard_negatives: tuple[float, float] | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """The released RoCL loss over [B, 3, D] features, views [x1, x2, a] (view 2 adversarial).

    yqy2001/A-InfoNCE Asym-RoCL/loss.py (commit b28763e): ``NT_xent`` / ``NT_xent_HN`` (adv_type
    'Rep') on ``pairwise_similarity``, every column detached; α = ``stpg_degree``, arguments as
    ``a_infonce``'s. Quirks reproduced, one line each:
    - projections re-normalised as z/(‖z‖ + 1e-8); similarity z_u·sg(z_k)/T, no max shift;
    - plain: ℓ = −log(e_uk / (Σ_{k≠u} e_uk + 1e-8) + 1e-8);
    - the six pair terms are summed per instance and divided by 3N (not averaged per anchor);
    - IP: w·[α·(ℓ(x1→a) + ℓ(x2→a)) + (1−α)·(ℓ(a→x1) + ℓ(a→x2))]; without IP w is ignored;
    - HN: importance (neg + 1e-9)^β over the whole row, column k divided by row k's mean;
    - HN: the final division is row-wise (pos_u + Ng_u); the floor N·e^{-2} is HCL's (0.5 hard-coded);
    - HN: pos is the mean of the 2 positives and sits in the denominator;
    - the total is multiplied by ``scale`` (1 in the released code).
    """
    _validate_official(features, ROCL_VIEWS, "[x1, x2, a]", temperature, alpha, adv_weight, hard_negatives, scale)
    alpha = _loss_alpha(alpha, features.dtype)
    batch = features.shape[0]
    outputs = torch.cat(torch.unbind(features, dim=1), dim=0).to(_compute_dtype(features.dtype))
    n = outputs.shape[0]
    normalised = outputs / (outputs.norm(dim=1).view(n, 1) + 1e-8)
    exp_similarity = torch.exp((1.0 / temperature) * (normalised @ normalised.T.detach()))
    not_self = 1 - torch.eye(n, device=outputs.device, dtype=outputs.dtype)
    if hard_negatives is None:
        masked = exp_similarity * not_self
        losses = -torch.log(masked / (masked.sum(dim=1).view(n, 1) + 1e-8) + 1e-8)
    else:
        positive = torch.eye(batch, device=outputs.device, dtype=outputs.dtype).repeat(3, 3) * not_self
        pos, ng = _official_hcl_ratio(exp_similarity, positive, not_self, (batch - 1) * 3, *hard_negatives)
        losses = -torch.log(exp_similarity / (pos + ng).view(n, 1))

    def block(row: int, column: int) -> torch.Tensor:
        return torch.diag(losses[row * batch : (row + 1) * batch, column * batch : (column + 1) * batch])

    total = block(0, 1) + block(1, 0)
    if alpha is None:
        total = total + block(0, 2) + block(2, 0) + block(1, 2) + block(2, 1)
    else:
        total = total + adv_weight * ((block(0, 2) + block(1, 2)) * alpha + (block(2, 0) + block(2, 1)) * (1 - alpha))
    return scale * ((1.0 / float(n)) * torch.sum(total))


# ---------------------------------------------------------------------------- adaptive α


def adaptive_alpha(d: float, d_bar: float, d_min: float, alpha0: float) -> float:
    """Adaptive IP share α after warm-up (AdvCL-IP scripts; docs/design.md §3).

    As clean and adversarial features converge (less identity confusion), the asymmetry
    relaxes towards the symmetric 0.5: d > D̄ → α₀; d < d_min → 0.5; otherwise the linear
    ramp α₀ + (0.5 − α₀)(D̄ − d)/(D̄ − d_min) from α₀ at d = D̄ to 0.5 at d = d_min.
    The degenerate D̄ = d = d_min (a 0/0 in the released code) gives 0.5.
    """
    d, d_bar, d_min, alpha0 = float(d), float(d_bar), float(d_min), float(alpha0)
    if d > d_bar:
        return alpha0
    if d < d_min or d_bar <= d_min:
        return 0.5
    return alpha0 + (0.5 - alpha0) * (d_bar - d) / (d_bar - d_min)


class AdaptiveAlpha:
    """Stateful adaptive α of the AdvCL-IP scripts (docs/design.md §3; docs/fidelity.md).

    During epochs < ``warmup_epochs`` (0-indexed) it returns α₀ and accumulates D̄, the
    batch-size-weighted mean of the per-step clean/adversarial feature distance; D̄ is then
    frozen and each step's α follows ``adaptive_alpha``. With no warm-up D̄ stays 0, so α₀
    is always returned (as released). ``state_dict`` lets a resumed run keep D̄.
    """

    def __init__(self, alpha0: float, warmup_epochs: int, d_min: float):
        if not 0.0 <= float(alpha0) <= 1.0:
            raise ValueError(f"alpha0={alpha0!r} is invalid: allowed a value in [0, 1]")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={warmup_epochs!r} is invalid: allowed integers >= 0")
        if not 0.0 <= float(d_min) < math.inf:
            raise ValueError(f"d_min={d_min!r} is invalid: allowed finite numbers >= 0")
        self.alpha0, self.warmup_epochs, self.d_min = float(alpha0), warmup_epochs, float(d_min)
        self.total, self.count = 0.0, 0

    @property
    def mean_distance(self) -> float:
        """D̄ so far (0 before any warm-up step, as the released AverageMeter)."""
        return self.total / self.count if self.count else 0.0

    def update(self, epoch: int, distance: float, batch_size: int) -> float:
        """α for this step, given its mean clean/adversarial distance over ``batch_size`` images."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid: allowed integers >= 1")
        distance = float(distance)
        if not 0.0 <= distance < math.inf:
            raise ValueError(f"distance={distance!r} is invalid: allowed finite numbers >= 0")
        if epoch < self.warmup_epochs:
            self.total += distance * batch_size
            self.count += int(batch_size)
            return self.alpha0
        return adaptive_alpha(distance, self.mean_distance, self.d_min, self.alpha0)

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])
