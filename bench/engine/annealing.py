"""DynACL's annealing: augmentation strength and clean/adversarial loss weights per epoch.

Luo, Wang, Wang, "Rethinking the Effect of Data Augmentation in Adversarial Contrastive
Learning", ICLR 2023 (DynACL). Strong augmentation helps the representation and hurts
robustness, weak augmentation the reverse, so the strength s anneals from 1 towards 0 in
steps of P epochs while the adversarial half of the loss gains weight. Two codings exist:

- PKU-ML/DYNACL ``train_DynACL.py`` (``reload`` and ``train``): the data loader is rebuilt with
  strength s at epochs ≡ 1 (mod P) (1-indexed), and the step weight of the adversarial NT-Xent is
  w = min(1 + ⌊epoch/P⌋·(P/E)·λ, 2), 1-indexed epoch, λ = ``--swap_param`` = 2/3;
- GodXuxilie/Enhancing_ACL_via_AIR ``pretraining.py`` (``--DynAug``) and
  GodXuxilie/Efficient_ACL_via_RCS ``ACL_RCS/DynACL_RCS.py``: the same s, and
  (1 − ω)·L_clean + (1 + ω)·L_adv with ω = λ·(1 − s), λ = 2/3 hard-coded.

Both give ω = w − 1 up to a shift of one epoch: the released DynACL weight steps up at
1-indexed epoch P (one epoch before the strength), the re-implementations' with the strength.
Every function here takes the harness's 0-indexed epoch.
"""

from __future__ import annotations

import math

from bench.engine.views import StrongAugment

ANNEAL_PERIOD = 50  # P: epochs between strength steps (train_DynACL.py --reload_frequency; AIR/RCS K = 50)
ANNEAL_LAMBDA = 2 / 3  # λ (train_DynACL.py --swap_param; AIR/RCS LAMBDA)


def _check_schedule(epoch: int, epochs: int, period: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} is invalid: allowed integers >= 1 (the run's total pretraining epochs)")
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"period={period!r} is invalid: allowed integers >= 1")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < epochs:
        raise ValueError(f"epoch={epoch!r} is invalid: allowed integers in [0, {epochs})")


def augmentation_strength(epoch: int, epochs: int, period: int = ANNEAL_PERIOD) -> float:
    """s = 1 − P·⌊e/P⌋/E for 0-indexed epoch e of E: 1.00, 0.95, …, 0.05 with P = 50, E = 1000.

    Released: ``strength = 1 - (epoch - 1) / epochs`` evaluated at 1-indexed epochs ≡ 1 (mod P)
    (train_DynACL.py), ``1 - int((epoch-1)/K) * K/epochs`` every epoch (AIR, RCS): both are this.
    """
    _check_schedule(epoch, epochs, period)
    return 1.0 - period * (epoch // period) / epochs


def dynacl_adversarial_weight(
    epoch: int, epochs: int, period: int = ANNEAL_PERIOD, anneal_lambda: float = ANNEAL_LAMBDA
) -> float:
    """w of ½[(2 − w)·L_clean + w·L_adv] as train_DynACL.py computes it for 0-indexed epoch e.

    w = min(1 + ⌊(e + 1)/P⌋·(P/E)·λ, 2): the released code uses the 1-indexed epoch e + 1, so
    w first rises in the last epoch of each strength period (e + 1 = P), not with the strength.
    """
    _check_schedule(epoch, epochs, period)
    if not 0 <= anneal_lambda < math.inf:
        raise ValueError(f"anneal_lambda={anneal_lambda!r} is invalid: allowed finite numbers >= 0")
    return min(1.0 + ((epoch + 1) // period) * (period / epochs) * anneal_lambda, 2.0)


def reweighting_omega(strength: float, anneal_lambda: float = ANNEAL_LAMBDA) -> float:
    """ω = λ·(1 − s) of (1 − ω)·L_clean + (1 + ω)·L_adv (AIR ``--DynAug``, RCS ``DynACL_RCS.py``)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength!r} is invalid: allowed numbers in [0, 1]")
    if not 0 <= anneal_lambda < math.inf:
        raise ValueError(f"anneal_lambda={anneal_lambda!r} is invalid: allowed finite numbers >= 0")
    return anneal_lambda * (1.0 - strength)


def annealed_augment(strength: float) -> StrongAugment:
    """The view of strength s (train_DynACL.py ``reload``; AIR ``get_transform``).

    RandomResizedCrop scale (1 − 0.9·s, 1), flip with p 0.5 (never annealed), colour jitter
    (0.4s, 0.4s, 0.4s, 0.1s) with probability 0.8·s, grayscale with probability 0.2·s.
    s = 1 is ACL's view (crop scale (0.1, 1)).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength!r} is invalid: allowed numbers in [0, 1]")
    return StrongAugment(
        crop_scale=(1.0 - 0.9 * strength, 1.0),
        jitter=(0.4 * strength, 0.4 * strength, 0.4 * strength, 0.1 * strength),
        jitter_p=0.8 * strength,
        grayscale_p=0.2 * strength,
    )
