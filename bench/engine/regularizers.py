"""AIR's invariant regularisers (Xu, Zhang, Liu, Sugiyama, Kankanhalli, NeurIPS 2023).

"Enhancing Adversarial Contrastive Learning via Adversarial Invariant Regularization": a
representation should not depend on the style of the augmentation. For two augmentations
τ_i, τ_j of a batch, each gives a distribution over the batch:

    P_i(b) = softmax_b( s(z_i(b), z_o(b)) / T )                        standard (SIR)
    Q_i(b) = softmax_b( s(ã_i(b), z_o(b)) / T ) · softmax_b( s(ã_i(b), z_i(b)) / T )   adversarial (AIR)

where z_o is the projection of the un-augmented image, z_i of its view i, ã_i of the
adversarial view i, s the cosine similarity and softmax_b normalises over the batch (the
released code takes the diagonal of the B×B similarity matrix, then a softmax over those B
entries). The regularisers are KL(P_i ‖ P_j) and KL(Q_i ‖ Q_j); Q is a product of two
distributions and is not renormalised (the paper's formula does not renormalise it either),
so its "KL" is Σ Q_i·log(Q_i/Q_j) of two positive measures. Every term keeps its gradient.

Released arithmetic (GodXuxilie/Enhancing_ACL_via_AIR ``AIR.py``), ``quirks="official"``:
``F.kl_div(P_i, log P_j, log_target=True, reduction="sum")`` is given the probability P_i where
it expects a log-probability, so it computes Σ_b P_j(b)·(log P_j(b) − P_i(b)), which is
neither KL direction and can be negative; the AIR term does the same with Q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUIRKS = ("none", "official")


def pairwise_batch_softmax(anchors: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax over the batch of s(anchors[b], targets[b]) / T: the diagonal of the released B×B logits."""
    if anchors.dim() != 2 or anchors.shape != targets.shape:
        shapes = f"anchors.shape={tuple(anchors.shape)}, targets.shape={tuple(targets.shape)}"
        raise ValueError(f"{shapes} are invalid: allowed two tensors of the same [B, D] shape")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid: allowed numbers > 0")
    dtype = torch.promote_types(anchors.dtype, torch.float32)
    similarity = (F.normalize(anchors.to(dtype), dim=1) * F.normalize(targets.to(dtype), dim=1)).sum(1)
    return F.softmax(similarity / temperature, dim=0)


def kl_sum(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_b p(b)·(log p(b) − log q(b)): KL(p ‖ q) for distributions, and the same sum for the
    unnormalised products of the AIR term."""
    return (p * (p.log() - q.log())).sum()


def released_kl_sum(p_i: torch.Tensor, p_j: torch.Tensor) -> torch.Tensor:
    """What ``F.kl_div(p_i, log p_j, log_target=True, reduction='sum')`` computes (AIR.py):
    Σ_b p_j(b)·(log p_j(b) − p_i(b)), the probability p_i standing where a log-probability belongs."""
    return (p_j * (p_j.log() - p_i)).sum()


def invariant_regularizers(
    z_i: torch.Tensor,
    z_j: torch.Tensor,
    z_orig: torch.Tensor,
    adv_i: torch.Tensor,
    adv_j: torch.Tensor,
    temperature: float = 0.5,
    quirks: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SIR, AIR) of AIR.py for [B, D] projections of views i, j, the original image and the
    adversarial views i, j (normalised here; the released code normalises too). See the module
    docstring: KL(P_i ‖ P_j), KL(Q_i ‖ Q_j) by default; the released sums under ``"official"``."""
    if quirks not in QUIRKS:
        raise ValueError(f"quirks={quirks!r} is invalid: allowed {list(QUIRKS)}")
    p_i = pairwise_batch_softmax(z_i, z_orig, temperature)
    p_j = pairwise_batch_softmax(z_j, z_orig, temperature)
    q_i = pairwise_batch_softmax(adv_i, z_orig, temperature) * pairwise_batch_softmax(adv_i, z_i, temperature)
    q_j = pairwise_batch_softmax(adv_j, z_orig, temperature) * pairwise_batch_softmax(adv_j, z_j, temperature)
    divergence = released_kl_sum if quirks == "official" else kl_sum
    return divergence(p_i, p_j), divergence(q_i, q_j)
