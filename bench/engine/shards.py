"""``pretrain.shards``: the released multi-GPU semantics of one step, reproduced on any device.

The released codes' numbers depend on their GPU count (docs/fidelity.md, docs/speed.md):
- AdvCL (LijieFan/AdvCL pretraining_advCL.py, yqy2001/A-InfoNCE Asym-AdvCL) runs its model under
  ``nn.DataParallel`` on 2 GPUs with apex's SyncBN conversion, which is inactive without
  ``torch.distributed``: every forward has per-GPU BatchNorm statistics over 256 images, while the
  attack and the loss see the whole batch (DataParallel gathers the outputs);
- RoCL (Kim-Minseon/RoCL rocl_train.py, Asym-RoCL) runs DDP on 2 GPUs with SyncBatchNorm: BatchNorm
  over the whole batch, the attack and the (1/λ) regulariser on each GPU's 256 images, the
  contrastive matrix gathered over 512.

A step with ``shards = S`` splits the batch of B instances into S contiguous shards of B/S, as S
DDP ranks would hold it, and gives each shard its own generator, derived from (seed, shard), for
its views and random starts. BatchNorm statistics are per shard (each shard's rows of every
forward are normalised by their own mean and variance; only shard 0 moves the running statistics,
as DataParallel keeps the replica on GPU 0 and DDP broadcasts rank 0's buffers), unless the method
declares ``synced_batch_norm`` (RoCL). What a method computes per shard or over the whole batch
is its own released semantics, written with ``Shards.map`` / ``gather_shard`` (per shard) and
``gather`` (over all shards).

The same ``Shards`` object serves one process holding every shard and ``W`` DDP ranks holding one
shard each (``bench.runs.distributed``): there ``gather`` is a gradient-carrying all-gather, so W ranks
compute what one process with ``shards = W`` computes. With S = 1 in one process every helper is
the identity (no split, no copy), so the default numbers are those of the code before shards.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.engine import attacks  # attacks.random_start looked up per call: tests replay the released starts


def shard_seed(seed: int, shard: int) -> int:
    """The generator seed of shard (or DDP rank) ``shard``: the run's seed for shard 0, so one shard
    draws exactly what the run drew before shards existed; a hash of (seed, shard) otherwise."""
    if shard == 0:
        return seed
    digest = hashlib.sha256(f"acl-bench shard {seed} {shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def shard_generators(seed: int, shards: Sequence[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(shard_seed(seed, shard)) for shard in shards]


def split_rows(x: torch.Tensor, parts: int, views: int = 1) -> list[torch.Tensor]:
    """Shard ``s`` of a stack of ``views`` views of one batch (rows ``v·B + i``): the rows of its
    instances in every view, view-major, which is what rank ``s`` forwards under DDP."""
    if parts == 1:
        return [x]
    batch = x.shape[0] // views
    if batch * views != x.shape[0] or batch % parts:
        raise ValueError(
            f"a tensor of {x.shape[0]} rows is not {views} view(s) of a batch divisible into {parts} shards"
        )
    stacked = x.reshape(views, parts, batch // parts, *x.shape[1:])
    return [stacked[:, shard].reshape(-1, *x.shape[1:]) for shard in range(parts)]


def join_rows(chunks: Sequence[torch.Tensor], views: int = 1) -> torch.Tensor:
    """Inverse of ``split_rows``."""
    if len(chunks) == 1:
        return chunks[0]
    parts = [chunk.reshape(views, -1, *chunk.shape[1:]) for chunk in chunks]
    joined = torch.stack(parts, dim=1)  # [views, shards, b, ...]
    return joined.reshape(-1, *joined.shape[3:])


@dataclass
class Shards:
    """How one step's batch is split, and which shards this process holds.

    count: S, shards of the whole batch; generators: one per shard held here (all S in one
    process, one under DDP); collective: ``bench.engine.collective.Collective`` when W > 1 processes
    share the batch (then ``count`` is W, or 1 for one shard spanning every rank).
    """

    count: int = 1
    generators: list[torch.Generator] = field(default_factory=list)
    collective: Any = None

    @property
    def local(self) -> int:
        return len(self.generators)

    # ------------------------------------------------------------------ per shard
    def split(self, x: torch.Tensor, views: int = 1) -> list[torch.Tensor]:
        return split_rows(x, self.local, views)

    def join(self, chunks: Sequence[torch.Tensor], views: int = 1) -> torch.Tensor:
        return join_rows(chunks, views)

    def map(self, fn: Callable[..., Any], *tensors: torch.Tensor, views: int = 1) -> Any:
        """``fn(*shard_tensors, generator)`` for each shard held here, outputs joined back.

        ``fn`` returns a tensor or a tuple of tensors (each ``views`` views of the shard)."""
        if self.local == 1:
            return fn(*tensors, self.generators[0])
        pieces = [self.split(tensor, views) for tensor in tensors]
        outputs = [
            fn(*(piece[shard] for piece in pieces), generator) for shard, generator in enumerate(self.generators)
        ]
        if isinstance(outputs[0], tuple):
            return tuple(self.join([out[index] for out in outputs], views) for index in range(len(outputs[0])))
        return self.join(outputs, views)

    def mean_over_shards(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """The mean over the shards held here of a per-shard scalar (DDP averages it over ranks)."""
        if self.local == 1:
            return fn(*tensors)
        pieces = [self.split(tensor) for tensor in tensors]
        return torch.stack([fn(*(piece[shard] for piece in pieces)) for shard in range(self.local)]).mean()

    def random_start(self, x: torch.Tensor, epsilon: float, views: int = 1) -> torch.Tensor | None:
        """PGD's uniform random start, each shard's rows drawn from its own generator (None for ε = 0,
        where ``pgd`` starts at x without drawing)."""

        if epsilon <= 0:
            return None
        return self.map(lambda rows, generator: attacks.random_start(rows, epsilon, generator), x, views=views)

    # ------------------------------------------------------------------ across shards
    def gather(self, z: torch.Tensor) -> torch.Tensor:
        """Rows of every shard, in shard order, with gradients (one process: ``z`` already has them)."""
        return z if self.collective is None else self.collective.gather(z)

    def gather_shard(self, z: torch.Tensor) -> torch.Tensor:
        """Rows of this shard from every rank that holds part of it (only when one shard spans ranks)."""
        if self.collective is None or self.count == self.collective.world:
            return z
        return self.collective.gather(z)

    def instances(self, rows: int) -> int:
        """Instances of the whole batch, given the ``rows`` this process holds of one view."""
        return rows if self.collective is None else rows * self.collective.world

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """A batch mean over all shards (each holds the mean of equally many rows)."""
        return value if self.collective is None else self.collective.mean(value)


def of(ctx: Any) -> Shards:
    """The step's ``Shards``: the harness sets ``ctx.shards``; a bare context is one shard drawing
    from ``ctx.generator`` (tests and callers that build a ``StepContext`` themselves)."""
    shards = getattr(ctx, "shards", None)
    return shards if shards is not None else Shards(1, [ctx.generator])


# --------------------------------------------------------------------------- per-shard forwards


def _momentum(module: nn.modules.batchnorm._BatchNorm) -> float:
    """The running-statistics factor torch's BatchNorm uses (None = cumulative average)."""
    if module.momentum is None:
        return 1.0 / float(module.num_batches_tracked)
    return module.momentum


def _ghost_batch_norm(
    module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, shards: int, batch: int
) -> torch.Tensor:
    """Train mode: each shard's rows normalised by their own statistics; shard 0 alone moves the running ones."""
    tracking = module.track_running_stats and module.running_mean is not None
    if tracking and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
    momentum = _momentum(module) if tracking else 0.0
    rows = x.shape[0]
    if rows % batch:
        raise ValueError(
            f"per-shard BatchNorm: a forward of {rows} rows is not a whole number of views of the "
            f"batch ({batch} images); pretrain.shards > 1 needs every forward of a step to be views "
            "of its batch"
        )
    chunks = split_rows(x, shards, rows // batch)
    outputs = [
        F.batch_norm(
            chunk,
            module.running_mean if tracking and index == 0 else None,
            module.running_var if tracking and index == 0 else None,
            module.weight,
            module.bias,
            True,
            momentum if index == 0 else 0.0,
            module.eps,
        )
        for index, chunk in enumerate(chunks)
    ]
    return join_rows(outputs, rows // batch)


@contextmanager
def patched_attributes(target: Any, values: dict[str, Any]) -> Iterator[None]:
    """Set instance attributes for a block, then put back exactly what was there (so patches nest)."""
    missing = object()
    saved = {name: target.__dict__.get(name, missing) for name in values}
    for name, value in values.items():
        target.__dict__[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                target.__dict__.pop(name, None)
            else:
                target.__dict__[name] = value


class _State:
    """Whether a forward runs inside one shard's call, and whether that shard moves the running statistics."""

    def __init__(self) -> None:
        self.inside, self.tracking = False, True


SHARDED_CALLS = ("forward", "features", "project")  # the model's entry points (bench.engine.models.ContrastiveModel)


@contextmanager
def per_shard_forwards(model: nn.Module, shards: int, batch: int) -> Iterator[None]:
    """Inside, the model computes what ``shards`` DDP ranks without SyncBN compute: every call of its
    entry points (``forward``, ``features``, ``project``) on views of the batch runs once per shard on
    that shard's rows (the same shapes, hence the same arithmetic, as on a rank), so each shard's
    BatchNorm sees its own rows; only shard 0 moves the running statistics (DataParallel keeps GPU 0's
    replica, DDP broadcasts rank 0's buffers). A BatchNorm reached another way (a submodule called
    directly) still normalises per shard (ghost BN). Eval-mode forwards are unchanged."""
    if shards == 1:
        yield
        return
    state = _State()
    patched: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            module.forward = types.MethodType(_batch_norm_forward(module.forward, state, shards, batch), module)
            patched.append(module)
    calls = {
        name: _sharded_call(getattr(model, name), state, shards, batch)
        for name in SHARDED_CALLS
        if hasattr(model, name)
    }
    try:
        with patched_attributes(model, calls):
            yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def _batch_norm_forward(original: Callable, state: _State, shards: int, batch: int) -> Callable:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return original(x)
        if not state.inside:
            return _ghost_batch_norm(self, x, shards, batch)
        if state.tracking:
            return original(x)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    return forward


def _sharded_call(original: Callable, state: _State, shards: int, batch: int) -> Callable:
    def call(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if state.inside or x.shape[0] % batch:
            return original(x, *args, **kwargs)
        views = x.shape[0] // batch
        outputs = []
        try:
            for index, chunk in enumerate(split_rows(x, shards, views)):
                state.inside, state.tracking = True, index == 0
                outputs.append(original(chunk, *args, **kwargs))
        finally:
            state.inside, state.tracking = False, True
        return join_rows(outputs, views)

    return call
