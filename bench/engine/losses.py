"""Contrastive losses: SimCLR's NT-Xent and the asymmetric InfoNCE of A-InfoNCE.

References: Chen et al. 2020 (SimCLR, NT-Xent); Yu et al., "Adversarial Contrastive Learning
via Asymmetric InfoNCE", ECCV 2022 (A-InfoNCE: inferior positives and hard negatives);
Robinson et al. 2021 (HCL, the hard-negative estimator A-InfoNCE adopts). The formulas
implemented are those of docs/design.md §3 (``a_infonce``); the released code's arithmetic, with its
deviations from them, is reproduced by ``bench.engine.released_losses``, which AdvCL and RoCL call by
name when their parameter ``quirks`` is 'official' (docs/fidelity.md).

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
    z = torch.cat([z1, z2]).to(compute_dtype(z1.dtype))
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
    flags = validate_loss_inputs(
        features, adversarial, temperature, alpha, adv_weight, hard_negatives, detach_contrast, scale
    )
    alpha = loss_alpha(alpha, features.dtype)
    batch, views, dim = features.shape
    z = features.transpose(0, 1).reshape(views * batch, dim).to(compute_dtype(features.dtype))
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


def loss_alpha(alpha: float | torch.Tensor | None, dtype: torch.dtype) -> float | torch.Tensor | None:
    """A schedule's 0-d tensor α is detached and cast, so 1 − α is computed in the loss's precision."""
    if isinstance(alpha, torch.Tensor):
        return alpha.detach().to(compute_dtype(dtype))
    return alpha


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
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


def validate_loss_inputs(
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
