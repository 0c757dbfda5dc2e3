"""Collectives for one pretraining step shared by W processes (DDP under torchrun).

``bench.runs.train`` calls these inside a step; ``bench.runs.distributed`` starts and steers the
processes. Inside a step:
- rank r takes slice r of every batch of the seeded epoch order and draws its views and random
  starts from a generator seeded from (seed, r) (``bench.engine.shards.shard_seed``);
- contrastive features are all-gathered **with gradients** (``gather``); after ``backward`` the
  gradients are averaged over ranks, so W ranks compute the step of one process with
  ``pretrain.shards = W`` (``bench.engine.shards``): each rank's BatchNorm is its shard's (DDP without
  SyncBN), and rank 0's running statistics are broadcast at every step (as DDP's
  ``broadcast_buffers``), the ones a one-process run keeps from shard 0;
- ``pretrain.shards = 1`` (or a method whose released engine synchronised BatchNorm, RoCL) uses
  SyncBatchNorm, which exists on CUDA only.

Why not ``torch.nn.parallel.DistributedDataParallel``: a step calls the model many times (PGD's
inner loop differentiates with respect to inputs only, methods route BatchNorm branches per
call), which DDP's reducer hooks do not expect; one flat all-reduce of the gradients after
``backward`` is the same arithmetic. Why not ``torch.distributed.nn.functional.all_gather``: it is
deprecated in torch 2.14 and its gloo backward needs all-to-all; ``_GatherWithGrad`` below is
the same function (its backward sums every rank's gradient for this rank's rows).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bench.engine import lifetime
from bench.errors import ConfigError

TRAINING_TIMEOUT = datetime.timedelta(minutes=30)  # one collective of a step
CONTROL_TIMEOUT = datetime.timedelta(days=7)  # other ranks wait while rank 0 finetunes and evaluates

_ACTIVE: Collective | None = None
TORCHRUN_MARKS = (b"torchrun", b"torch.distributed.run")  # in torchrun's command line (`torchrun`, `python -m …`)


class DistributedRunFailed(BaseException):
    """A run failed under torchrun: the whole job stops (a collective cannot skip one rank).

    A BaseException so that the pipeline's per-run failure handling does not swallow it."""


class PeerLost(RuntimeError):
    """A collective failed: another rank of the job is gone (killed, OOM, its node lost). Not a fault
    of the run: every rank's checkpoint is intact, so the run is recorded resumable (review 2, D7)."""


@contextmanager
def _peers() -> Iterator[None]:
    """Around every collective: a failure of the backend (gloo's ``Connection closed by peer``,
    NCCL's ``DistBackendError``, both RuntimeErrors) becomes ``PeerLost``."""
    try:
        yield
    except PeerLost:
        raise
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PeerLost(f"a collective failed, another rank is gone ({first})") from error


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward: the sum over ranks of the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        with _peers():
            dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        with _peers():
            dist.all_reduce(grad, group=ctx.group)
        rows = grad.shape[0] // dist.get_world_size(ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * rows : (rank + 1) * rows], None


@dataclass
class Collective:
    """The process groups of a torchrun job: ``group`` for the step, ``control`` (gloo) for messages."""

    world: int
    rank: int
    group: Any
    control: Any

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.requires_grad:
            return _GatherWithGrad.apply(tensor, self.group)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        with _peers():
            dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        total = value.detach().clone()
        with _peers():
            dist.all_reduce(total, group=self.group)
        return total / self.world

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """One flat all-reduce of every gradient, divided by W (DDP's averaging)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        with _peers():
            dist.all_reduce(flat, group=self.group)
        flat /= self.world
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def broadcast_state(self, module: nn.Module, *, parameters: bool) -> None:
        """Rank 0's buffers (and parameters) on every rank."""
        tensors = list(module.buffers()) + (list(module.parameters()) if parameters else [])
        with _peers():
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0, group=self.group)

    def gather_objects(self, value: Any) -> list[Any]:
        values: list[Any] = [None] * self.world
        with _peers():
            dist.all_gather_object(values, value, group=self.control)
        return values

    def broadcast_object(self, value: Any = None) -> Any:
        box = [value]
        with _peers():
            dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def barrier(self) -> None:
        with _peers():
            dist.barrier(group=self.control)


def active() -> Collective | None:
    """The job's collective when this process is one rank of several, else None."""
    return _ACTIVE


def requested_world() -> int:
    """W when started by torchrun (its ``WORLD_SIZE``), else 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is invalid: allowed integers >= 1") from None


def init_from_env(device: str) -> Collective | None:
    """Join the torchrun job (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE`` > 1; None otherwise."""
    global _ACTIVE
    world = requested_world()
    if world <= 1:
        return None
    if _ACTIVE is not None:
        return _ACTIVE
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TRAINING_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    _ACTIVE = Collective(dist.get_world_size(), dist.get_rank(), dist.group.WORLD, control)
    return _ACTIVE


@contextmanager
def session(device: str) -> Iterator[Collective | None]:
    """The one process-group lifetime of a torchrun job (review 2, D17): join once (``init_from_env``),
    yield the collective (None in a single process), then, on success, a barrier (no rank tears its
    groups down while another still uses them) and, however the block ends, ``destroy_process_group``
    exactly once. Groups left to the interpreter's exit were torn down with gloo's threads still
    joinable: rank 0 aborted (``terminate called without an active exception``) once in four runs.

    A rank dies with torchrun (``lifetime.die_with_parent``): torchrun starts its ranks in sessions
    of their own, so a ``kill -9`` of torchrun otherwise orphans them (D7)."""
    if requested_world() <= 1:
        yield None
        return
    # before the rendezvous, which would wait for a torchrun killed while this rank was starting
    lifetime.die_with_parent(launcher_marks=TORCHRUN_MARKS if "TORCHELASTIC_RUN_ID" in os.environ else ())
    collective = init_from_env(device)
    finished = False
    try:
        yield collective
        finished = True
    finally:
        close(barrier=finished)


def close(*, barrier: bool = True) -> None:
    """End the job's process groups: a barrier first when ``barrier`` (every rank got here), then
    ``destroy_process_group`` (all groups), once; later calls do nothing."""
    global _ACTIVE
    active, _ACTIVE = _ACTIVE, None
    if active is None or not dist.is_initialized():
        return
    try:
        if barrier:
            active.barrier()
    finally:
        dist.destroy_process_group()


def attach(collective: Collective | None) -> None:
    """Make ``collective`` the active one (tests that start ranks themselves)."""
    global _ACTIVE
    _ACTIVE = collective


def check_shards(shards: int, collective: Collective | None, device: torch.device, synced: bool) -> str:
    """How BatchNorm runs for ``pretrain.shards`` here: 'whole' (one BN over the batch), 'per-shard'
    (ghost BN in one process, per-rank BN under DDP) or 'sync' (SyncBatchNorm across ranks)."""
    if collective is None:
        return "whole" if shards == 1 or synced else "per-shard"
    world = collective.world
    if shards not in (1, world):
        raise ConfigError(
            f"pretrain.shards={shards} is invalid under {world} processes: allowed {world} "
            "(per-rank BatchNorm) or 1 (SyncBatchNorm, CUDA only)"
        )
    if shards == world and not synced:
        return "per-shard"
    if device.type != "cuda":
        why = "pretrain.shards=1" if shards == 1 else "this method's released engine (SyncBatchNorm)"
        raise ConfigError(
            f"{why} needs SyncBatchNorm across the {world} processes, which torch supports on CUDA "
            f"only (device={device.type}): allowed pretrain.shards={world} with a method whose "
            "BatchNorm is per GPU, or run on CUDA"
        )
    return "sync"


def convert_sync_batch_norm(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every BatchNorm for a SyncBatchNorm sharing its parameters and buffers; returns what
    ``restore_batch_norm`` puts back (so finetuning on rank 0 alone never waits for other ranks)."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                synced = nn.SyncBatchNorm(
                    child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
                )
                synced.weight, synced.bias = child.weight, child.bias
                synced.running_mean, synced.running_var = child.running_mean, child.running_var
                synced.num_batches_tracked = child.num_batches_tracked
                synced.train(child.training)
                setattr(parent, name, synced)
                swapped.append((parent, name, child))
    _reset_branch_cache(model)
    return swapped


def restore_batch_norm(model: nn.Module, swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, original in swapped:
        original.train(getattr(parent, name).training)
        setattr(parent, name, original)
    _reset_branch_cache(model)


def _reset_branch_cache(model: nn.Module) -> None:
    model.__dict__.pop("_multi_bn_cache", None)
