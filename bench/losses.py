"""Contrastive losses: NT-Xent and the asymmetric InfoNCE of A-InfoNCE (Yu et al., ECCV 2022).

Notation (DESIGN §3): z are L2-normalised projections, T the temperature, s_uv = z_u·z_v,
ℓ(u→p) = −log(exp(s_up/T) / Σ_{k≠u} exp(s_uk/T)); ℓ^sg is the same with every z_k (k≠u)
detached, so its gradient reaches only the anchor z_u. Views of one instance are
positives of each other, all views of other instances are negatives.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020) for two aligned [B, D] batches of normalised projections.

    Mean over the 2B anchors of ℓ(u→p), p the other view of u's image.
    """
    z = torch.cat([z1, z2]).float()
    n = z1.shape[0]
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def _masks(batch: int, views: int, device) -> tuple[torch.Tensor, ...]:
    """Row u = view·B + instance. Returns view index, positive, negative and self masks."""
    instance = torch.arange(batch, device=device).repeat(views)
    view = torch.arange(views, device=device).repeat_interleave(batch)
    same = instance[:, None] == instance[None, :]
    self_mask = torch.eye(views * batch, dtype=torch.bool, device=device)
    return view, same & ~self_mask, ~same, self_mask


def _pair_losses(
    z: torch.Tensor, contrast: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, self_mask: torch.Tensor,
    temperature: float, hard_negatives: tuple[float, float] | None,
) -> torch.Tensor:
    """Matrix of ℓ(u→k) (or ℓ_HN) for every anchor row u; ``contrast`` may be detached."""
    similarity = z @ contrast.T
    if hard_negatives is None:
        logits = (similarity / temperature).masked_fill(self_mask, float("-inf"))
        return -(logits - torch.logsumexp(logits, dim=1, keepdim=True))
    beta, tau_plus = hard_negatives
    # e_uk = exp(s_uk / T), scaled by exp(-1/T) for range: ℓ_HN is invariant to that scale
    # as long as the clamp floor N·e^{-1/T} is scaled alike (→ N·e^{-2/T}).
    e = torch.exp((similarity - 1.0) / temperature)
    n_neg = negative.sum(1, keepdim=True).to(e.dtype)
    pos_mean = (e * positive).sum(1, keepdim=True) / positive.sum(1, keepdim=True)
    weights = torch.where(negative, e**beta, torch.zeros_like(e))
    importance = weights / (weights.sum(1, keepdim=True) / n_neg)  # normalised over u's own negatives
    negatives = ((importance * e).sum(1, keepdim=True) - tau_plus * n_neg * pos_mean) / (1.0 - tau_plus)
    negatives = torch.maximum(negatives, n_neg * math.exp(-2.0 / temperature))
    return -(torch.log(e) - torch.log(pos_mean + negatives))


def _validate(features: torch.Tensor, adversarial: Sequence[bool], alpha: Any, hard_negatives: Any, quirks: str) -> None:
    if features.dim() != 3:
        raise ValueError(f"features.shape={tuple(features.shape)} is invalid: allowed [B, V, D]")
    if len(adversarial) != features.shape[1]:
        raise ValueError(f"adversarial={list(adversarial)} is invalid: allowed one bool per view (V={features.shape[1]})")
    if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={float(alpha)} is invalid: allowed None or numbers in [0, 1]")
    if hard_negatives is not None and not 0.0 <= hard_negatives[1] < 1.0:
        raise ValueError(f"tau_plus={hard_negatives[1]} is invalid: allowed numbers in [0, 1)")
    if quirks not in ("none", "official"):
        raise ValueError(f"quirks={quirks!r} is invalid: allowed ['none', 'official']")
    if features.shape[0] < 2:
        raise ValueError(f"batch size {features.shape[0]} is invalid: allowed >= 2 (negatives come from other instances)")


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
    quirks: str = "none",
) -> torch.Tensor:
    """Asymmetric InfoNCE over [B, V, D] features (view v of instance i at [i, v]).

    L = scale · mean over anchors u of (mean over u's positives p of c(u, p)), with
    c(u, p) = ℓ(u→p) for pairs of the same kind (ℓ^sg with ``detach_contrast``, as RoCL),
    c = w·ℓ(u→p) for adversarial/clean pairs when ``alpha`` is None, and the inferior-positive
    form c(a, v) = c(v, a) = w·[α·ℓ^sg(v→a) + (1−α)·ℓ^sg(a→v)] when ``alpha`` is given.
    ``hard_negatives=(β, τ⁺)`` turns every ℓ into the HCL form ℓ_HN (DESIGN §3).
    """
    _validate(features, adversarial, alpha, hard_negatives, quirks)
    if quirks == "official":
        raise NotImplementedError("quirks='official' is not available in this build: use quirks='none'")
    batch, views, dim = features.shape
    z = features.transpose(0, 1).reshape(views * batch, dim).float()
    view, positive, negative, self_mask = _masks(batch, views, z.device)
    is_adv = torch.tensor([bool(flag) for flag in adversarial], device=z.device)[view]
    cross = positive & (is_adv[:, None] != is_adv[None, :])
    losses = _pair_losses(z, z.detach() if detach_contrast else z, positive, negative, self_mask, temperature,
                          hard_negatives)
    if alpha is None:
        losses = torch.where(cross, adv_weight * losses, losses)
    else:
        stopped = _pair_losses(z, z.detach(), positive, negative, self_mask, temperature, hard_negatives)
        clean_anchor = torch.where(is_adv[:, None], stopped.T, stopped)  # ℓ^sg(v→a) at both (a,v) and (v,a)
        adv_anchor = torch.where(is_adv[:, None], stopped, stopped.T)  # ℓ^sg(a→v)
        losses = torch.where(cross, adv_weight * (alpha * clean_anchor + (1 - alpha) * adv_anchor), losses)
    per_anchor = torch.where(positive, losses, torch.zeros_like(losses)).sum(1) / positive.sum(1)
    return scale * per_anchor.mean()


class AdaptiveAlpha:
    """Adaptive α of the AdvCL-IP scripts (DESIGN §3).

    For the first K epochs α = α₀ while D̄, the batch-size-weighted mean feature distance
    between clean and adversarial inputs, accumulates; then per step with distance d:
    d > D̄ → α₀; d < d_min → 0.5; else α₀ + (0.5 − α₀)(D̄ − d)/(D̄ − d_min).
    """

    def __init__(self, alpha0: float, warmup_epochs: int, d_min: float):
        self.alpha0, self.warmup_epochs, self.d_min = float(alpha0), int(warmup_epochs), float(d_min)
        self.total, self.count = 0.0, 0

    @property
    def mean_distance(self) -> float:
        return self.total / self.count if self.count else 0.0

    def update(self, epoch: int, distance: float, batch_size: int) -> float:
        if epoch < self.warmup_epochs:
            self.total += distance * batch_size
            self.count += batch_size
            return self.alpha0
        return adaptive_alpha(distance, self.mean_distance, self.d_min, self.alpha0)

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


def adaptive_alpha(d: float, d_bar: float, d_min: float, alpha0: float) -> float:
    """The post-warm-up rule: a linear ramp from α₀ at d = D̄ to 0.5 at d = d_min."""
    if d > d_bar:
        return alpha0
    if d < d_min or d_bar <= d_min:
        return 0.5
    return alpha0 + (0.5 - alpha0) * (d_bar - d) / (d_bar - d_min)
