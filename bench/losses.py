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
        layout = _official_layout(features, adversarial, detach_contrast)
        official = _official_advcl if layout == "advcl" else _official_rocl
        return official(features, temperature, alpha, adv_weight, hard_negatives, scale)
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


# ---------------------------------------------------------------------- released code (quirks)

OFFICIAL_LAYOUTS = {
    "advcl": ((True, False, False, False), False),  # [x_adv, x1, x2, HFC], full gradient
    "rocl": ((False, False, True), True),  # [x1, x2, a], columns detached
}
HCL_CLAMP_TEMPERATURE = 0.5  # hard-coded in both released HN losses


def _official_layout(features: torch.Tensor, adversarial: Sequence[bool], detach_contrast: bool) -> str:
    for name, (views, detached) in OFFICIAL_LAYOUTS.items():
        if tuple(bool(flag) for flag in adversarial) == views and bool(detach_contrast) == detached:
            return name
    raise ValueError(
        f"quirks='official' with adversarial={list(adversarial)}, detach_contrast={detach_contrast} is invalid: "
        "allowed the AdvCL layout ([True, False, False, False], detach_contrast=False) or the RoCL layout "
        "([False, False, True], detach_contrast=True)"
    )


def _official_hcl(exp_logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor, n_neg: int,
                  beta: float, tau_plus: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HCL's negative term as released: returns (mean positive, clamped Ng), one per row.

    Quirk: the importance of column k is divided by the mean importance of *row k*
    (``imp.mean(dim=-1)`` broadcast over the last dimension), not of the anchor's row.
    """
    negatives = exp_logits * (1 - positive) * not_self
    pos_mean = (exp_logits * positive).sum(1) / positive.sum(1)
    importance = torch.exp(beta * torch.log(negatives + 1e-9))
    reweighted = importance * negatives / importance.mean(dim=-1)
    ng = (-tau_plus * n_neg * pos_mean + reweighted.sum(dim=-1)) / (1 - tau_plus)
    return pos_mean, torch.clamp(ng, min=n_neg * math.exp(-1 / HCL_CLAMP_TEMPERATURE))


def _official_advcl(features, temperature, alpha, adv_weight, hard_negatives, scale) -> torch.Tensor:
    """``ori_SupConLoss`` / ``SupConLoss`` of Asym-AdvCL (A-InfoNCE, commit b28763e), in ℓ form.

    Quirks reproduced, one line each:
    - logits are shifted by their (detached) row max, self-similarity included;
    - without IP, the clean-anchor→adversarial terms are *replaced* by the transposed
      adversarial-anchor terms (``mix[B:, :B] = ac.T``), and in-place aliasing gives that
      block w² instead of w;
    - with IP, both blocks get w·[α·ℓ^sg(v→a) + (1−α)·ℓ^sg(a→v)] (no aliasing);
    - HN: importance normalised by the wrong row's mean (column broadcast), the denominator
      of entry (u, p) is row p's (pos_p + Ng_p), and the clamp N·e^{-2} acts on max-shifted
      exponentials (e² ≈ 7.4× HCL's floor); the positive term is the mean of 3 positives;
    - the loss is the mean over all 4B anchors of the mean over their 3 positives, × ``scale``
      (the released T/0.07).
    """
    batch, views = features.shape[:2]
    z = torch.cat(torch.unbind(features, dim=1), dim=0).float()
    n = views * batch
    not_self = 1 - torch.eye(n, device=z.device)
    positive = torch.eye(batch, device=z.device).repeat(views, views) * not_self

    def pair_losses(contrast: torch.Tensor) -> torch.Tensor:
        dot = z @ contrast.T / temperature
        logits = dot - dot.max(dim=1, keepdim=True).values.detach()
        if hard_negatives is None:
            exp_logits = torch.exp(logits) * not_self
            return -(logits - torch.log(exp_logits.sum(1, keepdim=True)))
        exp_logits = torch.exp(logits)
        pos_mean, ng = _official_hcl(exp_logits, positive, not_self, (batch - 1) * views, *hard_negatives)
        return -torch.log(exp_logits / (pos_mean + ng))

    losses = positive * pair_losses(z)
    if alpha is None:
        top = losses[:batch, batch:] * adv_weight
        bottom = top.T * adv_weight
    else:
        stopped = positive * pair_losses(z.detach())
        mixed = alpha * stopped[batch:, :batch].T + (1 - alpha) * stopped[:batch, batch:]
        top, bottom = mixed * adv_weight, mixed.T * adv_weight
    mix = losses.clone()
    mix[:batch, batch:] = top
    mix[batch:, :batch] = bottom
    return scale * (mix.sum(1) / positive.sum(1)).mean()


def _official_rocl(features, temperature, alpha, adv_weight, hard_negatives, scale) -> torch.Tensor:
    """``NT_xent`` / ``NT_xent_HN`` of Asym-RoCL (A-InfoNCE, commit b28763e).

    Quirks reproduced, one line each:
    - projections are re-normalised as z/(‖z‖ + 1e-8) and every column is detached;
    - plain: −log(e/(Σ_{k≠u} e + 1e-8) + 1e-8), the six pair terms summed and divided by 3N;
    - with IP: w·[α·(ℓ(x1→a) + ℓ(x2→a)) + (1−α)·(ℓ(a→x1) + ℓ(a→x2))], each pair counted once;
      without IP the adversarial terms have weight 1 whatever w (w is unused there);
    - HN: the importance is normalised by the wrong row's mean (column broadcast), the final
      division is row-wise, the clamp N·e^{-2} is HCL's; the positive term is the mean of 2.
    The total is multiplied by ``scale``.
    """
    batch = features.shape[0]
    outputs = torch.cat(torch.unbind(features, dim=1), dim=0).float()
    normalised = outputs / (outputs.norm(dim=1, keepdim=True) + 1e-8)
    similarity = (1.0 / temperature) * normalised @ normalised.T.detach()
    n = 3 * batch
    not_self = 1 - torch.eye(n, device=outputs.device)
    exp_similarity = torch.exp(similarity)
    if hard_negatives is None:
        exp_similarity = exp_similarity * not_self
        losses = -torch.log(exp_similarity / (exp_similarity.sum(1, keepdim=True) + 1e-8) + 1e-8)
    else:
        positive = torch.eye(batch, device=outputs.device).repeat(3, 3) * not_self
        pos_mean, ng = _official_hcl(exp_similarity, positive, not_self, (batch - 1) * 3, *hard_negatives)
        losses = -torch.log(exp_similarity / (pos_mean + ng).view(n, 1))

    def block(row: int, column: int) -> torch.Tensor:
        return torch.diag(losses[row * batch : (row + 1) * batch, column * batch : (column + 1) * batch])

    total = block(0, 1) + block(1, 0)
    if alpha is None:
        total = total + block(0, 2) + block(2, 0) + block(1, 2) + block(2, 1)
    else:
        total = total + adv_weight * ((block(0, 2) + block(1, 2)) * alpha + (block(2, 0) + block(2, 1)) * (1 - alpha))
    return scale * total.sum() / n


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
