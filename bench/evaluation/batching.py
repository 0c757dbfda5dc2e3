"""How evaluation batches its attacks (``bench speed`` measures this fast path): the batch size a device
affords (probed once per model and input shape on a GPU, ``CPU_BATCH`` on a CPU), bf16 autocast
logits, and the eval-mode context every evaluation attack runs in."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bench.engine.attacks import autocast

CPU_BATCH = 256  # ``evaluate.batch_size`` 0 (auto) on CPU: larger batches do not run faster there
AUTO_MEMORY_SHARE = 0.6  # auto batch on a GPU: the PGD step of one batch may use this share of free memory
AUTO_BATCH_RANGE = (256, 8192)
PROBE_ROWS = 32
_probed: dict[tuple, int] = {}  # (model, input shape, device) -> the batch its probe afforded


def eval_batch_size(model: nn.Module, x: torch.Tensor, requested: int) -> int:
    """``evaluate.batch_size``: the requested one; for 0 (auto) 256 on CPU, and on a GPU the largest
    power of two (256 to 8192) whose PGD step (forward + input gradient, eval mode) fits in 60 % of
    the free memory, from the peak memory of one probe step on 32 images (once per model class,
    image shape and device). AutoAttack's steps (APGD, FAB, Square) hold about as much per image."""
    if requested > 0:
        return requested
    if x.device.type != "cuda" or x.shape[0] == 0:
        return CPU_BATCH
    key = (type(model), sum(parameter.numel() for parameter in model.parameters()), tuple(x.shape[1:]), str(x.device))
    if key not in _probed:
        _probed[key] = _probe_batch(model, x)
    return _probed[key]


def _probe_batch(model: nn.Module, x: torch.Tensor) -> int:
    device = x.device
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    probe = x[:PROBE_ROWS].detach().clone().requires_grad_(True)
    with eval_mode(model):
        torch.autograd.grad(model(probe).logsumexp(1).sum(), probe)
    per_image = max(1, torch.cuda.max_memory_allocated(device) - base) / probe.shape[0]
    free, _ = torch.cuda.mem_get_info(device)
    fitting = max(1, int(AUTO_MEMORY_SHARE * free / per_image))
    low, high = AUTO_BATCH_RANGE
    return max(low, min(high, 2 ** int(math.log2(fitting))))


class AutocastLogits(nn.Module):
    """A classifier run under bf16 autocast (``evaluate.amp``, CUDA), its logits returned in fp32:
    the attacks' own arithmetic (steps, projections, AutoAttack's bookkeeping) stays fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, True):
            logits = self.model(x)
        return logits.float()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside, the previous mode of every submodule restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
