"""L-infinity attacks shared by pretraining, finetuning and evaluation.

Every attack here is a pure function of its inputs: it never changes the model's
train/eval mode (the caller decides, because the papers differ: AdvCL attacks in train
mode, ACL and RoCL in eval mode, evaluation always in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

LossOfInputs = Callable[[torch.Tensor], torch.Tensor]

# Process-wide switches of the precision check (scripts/precision_check.py), off by default:
# bf16 autocast on CPU too (so the check's code runs in a CPU test), and a list that collects every
# PGD sign step (so fp32 and bf16 adversaries can be compared step by step).
_STATE: dict[str, object] = {"cpu_autocast": False, "signs": None}


def autocast_applies(device: torch.device | str) -> bool:
    """Whether ``amp`` switches bf16 autocast on for ``device``: CUDA, or CPU inside ``cpu_autocast``."""
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and bool(_STATE["cpu_autocast"]))


@contextmanager
def cpu_autocast() -> Iterator[None]:
    """bf16 autocast on CPU where ``amp`` asks for it, for the block (the precision check's CPU test;
    never on by default: CPU runs stay fp32 and bit-identical to a plain loop)."""
    saved, _STATE["cpu_autocast"] = _STATE["cpu_autocast"], True
    try:
        yield
    finally:
        _STATE["cpu_autocast"] = saved


@contextmanager
def recording_sign_steps() -> Iterator[list[torch.Tensor]]:
    """Every PGD sign step taken in the block, in order, as int8 tensors (the precision check's
    adversary agreement: the share of sign entries fp32 and bf16 attacks agree on)."""
    saved, signs = _STATE["signs"], []
    _STATE["signs"] = signs
    try:
        yield signs
    finally:
        _STATE["signs"] = saved


def autocast(device: torch.device | str, enabled: bool):
    """bf16 autocast on CUDA (bf16 needs no loss scaling); a no-op elsewhere, so CPU numbers are fp32
    (unless inside ``cpu_autocast``).

    Inside it the model's matrix products and convolutions run in bf16; ``pgd`` keeps its iterate,
    the gradient sign, the projection and the clamp in the input's dtype (fp32)."""
    if enabled and autocast_applies(device):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def check_epsilon(epsilon: float, step_size: float, steps: int) -> None:
    """Reject impossible attack settings with one clear line."""
    if epsilon < 0:
        raise ValueError(f"epsilon={epsilon} is invalid: allowed values are >= 0")
    if step_size < 0:
        raise ValueError(f"step_size={step_size} is invalid: allowed values are >= 0")
    if steps < 0:
        raise ValueError(f"steps={steps} is invalid: allowed values are integers >= 0")


def random_start(x: torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise in the epsilon ball, clamped to the image range [0, 1]."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2 * noise - 1) * epsilon).clamp(0.0, 1.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project onto the L-inf ball around x intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)


def pgd(
    loss_fn: LossOfInputs,
    x: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    random_init: bool = True,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    parameter_gradients: bool = False,
) -> torch.Tensor:
    """Projected gradient *ascent* on ``loss_fn`` (Madry et al. 2018), L-inf, sign steps.

    ``loss_fn`` maps a batch of inputs to a scalar to maximise; any differentiable
    objective works (cross-entropy, NT-Xent, KL). ``start`` overrides the initial point
    (TRADES starts at x + 0.001·N(0, 1); ``bench.engine.shards`` draws each shard's random start from its
    own generator). Returns a detached tensor within ``epsilon`` of ``x`` and inside [0, 1], in x's
    dtype: under bf16 autocast only ``loss_fn`` runs in bf16, the gradient w.r.t. the fp32 iterate
    is fp32 and the sign step, projection and clamp below are fp32 element-wise operations.
    ``parameter_gradients`` (``bench speed``'s reference-style path) differentiates as
    VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py ``PGD_contrastive`` does, also
    into every parameter's ``.grad`` (the caller zeroes them before its own backward).
    """
    check_epsilon(epsilon, step_size, steps)
    x = x.detach()
    if start is not None:
        x_adv = project(start.detach(), x, epsilon)
    elif random_init and epsilon > 0:
        x_adv = random_start(x, epsilon, generator)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(x_adv)
        if parameter_gradients:  # the released ACL's ``loss.backward()``: same step, wasted weight gradients
            loss.backward()
            grad = x_adv.grad
        else:
            (grad,) = torch.autograd.grad(loss, x_adv)
        sign = grad.sign()
        if _STATE["signs"] is not None:
            _STATE["signs"].append(sign.detach().to(torch.int8))
        x_adv = project(x_adv.detach() + step_size * sign, x, epsilon)
    return x_adv.detach()


def pgd_cross_entropy(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    random_init: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD maximising summed cross-entropy of a classifier (the evaluation/ALF attack)."""
    return pgd(
        lambda inputs: F.cross_entropy(classifier(inputs), y, reduction="sum"),
        x,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        random_init=random_init,
        generator=generator,
    )


TRADES_STARTS = ("noise", "clean")  # where the TRADES KL attack starts (trades_kl_attack)


def trades_kl_attack(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
    clean_classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    start: str = "noise",
) -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): maximise KL(p(x') || p(x)).

    ``start='noise'`` starts at x + 0.001·N(0, 1) as the released TRADES code does; ``'clean'`` at x
    itself, as DYNACL's ``utils.trades_loss``/``trades_loss_dual`` (where the first sign step follows a
    gradient that is rounding noise when both routes agree). ``clean_classifier`` (default:
    ``classifier``) gives the clean target p(x): RobustSSL's dual-BN TRADES routes it through BN
    'normal' and x' through 'pgd' (``Vanilla_Finetuning/utils.py trades_loss_dual``).
    """
    if start not in TRADES_STARTS:
        raise ValueError(f"start={start!r} is invalid: allowed {list(TRADES_STARTS)}")
    with torch.no_grad():
        clean_probs = F.softmax((clean_classifier or classifier)(x), dim=1)
    if start == "noise":
        x_start = x + 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        x_start = x
    return pgd(
        lambda inputs: F.kl_div(F.log_softmax(classifier(inputs), dim=1), clean_probs, reduction="sum"),
        x,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        start=x_start,
    )
