"""The released A-InfoNCE code's loss arithmetic, reproduced by name (``quirks='official'``).

AdvCL and RoCL (and their variants) call ``official_advcl_loss`` / ``official_rocl_loss`` instead of
``bench.engine.losses.a_infonce`` when their parameter ``quirks`` is 'official': the released
functions deviate from the formulas of docs/design.md §3 (docs/fidelity.md lists how), and a
reproduction needs their numbers. The notation is that of ``bench.engine.losses``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.engine.losses import compute_dtype, loss_alpha, validate_loss_inputs

# The released HN losses hard-code 0.5 as the temperature of their clamp floor N·e^{-1/0.5}.
OFFICIAL_CLAMP_TEMPERATURE = 0.5
# The view order of each released loss (True = adversarial).
ADVCL_VIEWS = (True, False, False, False)  # [x_adv, x1, x2, HFC], full gradient
ROCL_VIEWS = (False, False, True)  # [x1, x2, a], every column detached


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
    """``validate_loss_inputs`` for a released loss, whose view order is fixed (``names``)."""
    if isinstance(features, torch.Tensor) and features.dim() == 3 and features.shape[1] != len(views):
        raise ValueError(
            f"features.shape={tuple(features.shape)} is invalid: allowed [B, {len(views)}, D] "
            f"(the released loss's views {names})"
        )
    validate_loss_inputs(features, views, temperature, alpha, adv_weight, hard_negatives, False, scale)


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
    alpha = loss_alpha(alpha, features.dtype)
    batch, views = features.shape[:2]
    z = torch.cat(torch.unbind(features, dim=1), dim=0).to(compute_dtype(features.dtype))
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
    alpha = loss_alpha(alpha, features.dtype)
    batch = features.shape[0]
    outputs = torch.cat(torch.unbind(features, dim=1), dim=0).to(compute_dtype(features.dtype))
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
