"""The pretraining loop every method shares: batches, schedule, fast path, shards/DDP, checkpoint, resume.

A checkpoint holds the model, optimiser, method state (e.g. adaptive α), step, history and
every random state (each shard's view/attack generator, torch CPU and CUDA), and is written to a
temp file then renamed, so a killed run resumes bit-exactly (on CPU, with the thread count it
records) from its last checkpoint and a crash never leaves a corrupt file behind. The epoch's
batch order is derived from (seed, epoch), so it does not depend on where a run was resumed.

Fast path (CUDA; every switch is a ``pretrain`` field, recorded in the run's config): bf16
autocast of the model's calls (``amp``; losses, PGD's steps, projections and clamps stay fp32), channels-last
weights (``channels_last``: on CUDA by default, on CPU too with 'always'), cuDNN autotuning, TF32
matrix products, ``torch.compile`` of the model's forward
(``compile``, used by every PGD inner loop). The step never waits for the device except once per
``sync_interval`` steps, when the logged numbers of the pending steps are read in one copy. On
CPU none of the switches applies and the numbers are those of a plain fp32 loop.

``pretrain.shards`` and DDP: ``bench.engine.shards`` and ``bench.runs.distributed``.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.config import ConfigError, PretrainConfig, RunConfig
from bench.engine import collective as distributed_step
from bench.engine import progress
from bench.engine.attacks import autocast, autocast_applies
from bench.engine.checkpoints import CheckpointError
from bench.engine.data import steps_per_epoch, to_float
from bench.engine.models import ContrastiveModel
from bench.engine.optim import build_optimizer, learning_rate
from bench.engine.shards import (
    SHARDED_CALLS,
    Shards,
    patched_attributes,
    per_shard_forwards,
    shard_generators,
)
from bench.methodkit.method import Method, StepContext
from bench.runs.step_history import StepHistory
from bench.store.atomic import save_torch_atomic
from bench.store.results import RunDir

SYNC_INTERVAL_ACCELERATOR = 10  # steps between reads of the logged numbers on a GPU (one copy each)


@dataclass
class PretrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    steps: int = 0
    resumed_from: int = 0


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def sync_interval(device: torch.device, host_sync: str = "auto", per_epoch: int = 1) -> int:
    """Steps per read of the logged numbers (``pretrain.host_sync``). 'auto': every step on CPU (a
    read costs nothing there, and a non-finite loss stops the run before its update), every 10 on
    an accelerator; 'step': every step; 'epoch': once per epoch, so the loop itself never waits for
    the device inside an epoch (checkpoints still read first, so a non-finite loss never reaches one).
    Reading changes no number: the losses and weights are the same under every choice."""
    if host_sync == "epoch":
        return max(1, per_epoch)
    if host_sync == "step" or device.type == "cpu":
        return 1
    return SYNC_INTERVAL_ACCELERATOR


def _rng_state(generators: list[torch.Generator], collective) -> dict[str, Any]:
    states = [generator.get_state() for generator in generators]
    if collective is not None:
        states = [state for rank_states in collective.gather_objects(states) for state in rank_states]
    state = {"generator": states[0], "generators": states, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(generators: list[torch.Generator], state: dict[str, Any], first: int) -> None:
    """Shard generators ``first``, ``first + 1``, … from a checkpoint (one process holds all, rank r its own)."""
    states = state.get("generators") or [state["generator"]]
    if first + len(generators) > len(states):
        raise CheckpointError(
            f"the checkpoint holds {len(states)} shard generator(s) but this run needs "
            f"{first + len(generators)}: pretrain.shards changed; rerun without --resume"
        )
    for offset, generator in enumerate(generators):
        generator.set_state(states[first + offset])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A pretraining checkpoint, read with the weights-only unpickler (tensors, numbers, strings:
    a tampered file cannot run code); a damaged one is one clear line saying how to recover."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types (EOFError, UnpicklingError, RuntimeError)
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({progress.error_line(error)}): "
            "rerun without --resume to start this run afresh"
        ) from None


def restore_threads(recorded: int | None, name: str) -> None:
    """Use the thread count the interrupted run had: CPU kernels sum in a thread-dependent order,
    so only the same count resumes bit-exactly. The caller restores its own count afterwards."""
    if recorded and recorded != torch.get_num_threads():
        progress.log(f"  {name}: resuming with {recorded} thread(s), as the interrupted run had")
        torch.set_num_threads(int(recorded))


# ------------------------------------------------------------------ fast path


@contextmanager
def fast_path(model: ContrastiveModel, settings: PretrainConfig, device: torch.device) -> Iterator[torch.nn.Module]:
    """The model a step calls, with the switches of ``settings`` on for the duration (the process-wide
    ones and the model's memory format are restored afterwards). The CPU default (channels-last on
    CUDA only) leaves CPU numbers bit-identical to a plain contiguous fp32 loop."""
    backends = torch.backends
    saved = (backends.cudnn.benchmark, backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)
    if device.type == "cuda":
        backends.cudnn.benchmark = settings.cudnn_benchmark
        backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = settings.tf32
    channels_last = settings.channels_last == "always" or (settings.channels_last == "cuda" and device.type == "cuda")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    check_switches(settings, device)
    try:
        yield _compiled(model, settings)
    finally:
        backends.cudnn.benchmark, backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def check_switches(settings: PretrainConfig, device: torch.device) -> None:
    """``compile_attack`` captures CUDA graphs, which exist on CUDA only: one line elsewhere."""
    if settings.compile_attack and device.type != "cuda":
        raise ConfigError(
            f"pretrain.compile_attack=True is invalid on device {device.type!r}: allowed on 'cuda' only "
            "(it captures the PGD inner loop's forwards as CUDA graphs); use pretrain.compile elsewhere"
        )


def _compiled(model: ContrastiveModel, settings: PretrainConfig) -> torch.nn.Module:
    """``torch.compile`` of the model's forward (every PGD inner loop calls it); ``features`` and the
    heads stay eager. The harness keeps the original module for state dicts and the optimiser.
    ``compile_attack`` compiles with static shapes and CUDA-graph capture (mode 'reduce-overhead'):
    a PGD inner loop at 32 px is many small kernels, whose launches a graph replays at once."""
    if settings.compile_attack:
        return torch.compile(model, dynamic=False, mode="reduce-overhead")
    return torch.compile(model, dynamic=False) if settings.compile else model


@contextmanager
def autocast_calls(model: torch.nn.Module, device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast around the model's entry points only (``forward``, ``features``, ``project``),
    their outputs back in fp32: the network runs in bf16 while the losses (autocast would run their
    similarity matrices in bf16 too), PGD's sign steps, projections and clamps stay fp32."""
    if not (enabled and autocast_applies(device)):
        yield
        return

    def in_bf16(call):
        def run(*args: Any, **kwargs: Any):
            with autocast(device, True):
                out = call(*args, **kwargs)
            return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

        return run

    with patched_attributes(
        model, {name: in_bf16(getattr(model, name)) for name in SHARDED_CALLS if hasattr(model, name)}
    ):
        yield


def train_step(
    method: Method,
    step_model: torch.nn.Module,
    images: torch.Tensor,
    context: StepContext,
    settings: PretrainConfig,
    batch_norm: str,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One forward of ``method.training_step`` with the model in bf16 (``amp``) and its BatchNorm sharded."""
    shards = context.shards
    sharded = (
        per_shard_forwards(step_model, shards.count, images.shape[0])
        if batch_norm == "per-shard" and shards.collective is None
        else nullcontext()
    )
    step_model.train()
    with sharded, autocast_calls(step_model, context.device, settings.amp):
        return method.training_step(step_model, images, context)


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, collective) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if collective is not None:
        collective.average_gradients(model.parameters())
    optimizer.step()


# ------------------------------------------------------------------ the loop


def _shards(config: RunConfig, device: torch.device, collective, batch: int) -> Shards:
    count = config.pretrain.shards
    world = collective.world if collective is not None else 1
    if batch % count or batch % world:
        raise ConfigError(
            f"pretrain.batch_size={batch} is invalid with pretrain.shards={count} and {world} "
            f"process(es): allowed multiples of {math.lcm(count, world)}"
        )
    held = [collective.rank] if collective is not None else list(range(count))
    return Shards(count, shard_generators(config.seed, held, device), collective)


def _setup(
    method: Method, model: ContrastiveModel, train_images: torch.Tensor, context: StepContext, collective
) -> None:
    """``method.setup``; under DDP rank 0 first (it may write a cache, e.g. pseudo-labels), then the others."""
    if collective is not None and collective.rank != 0:
        collective.barrier()
    method.setup(model, train_images, context)
    if collective is not None and collective.rank == 0:
        collective.barrier()


def pretrain(
    method: Method,
    model: ContrastiveModel,
    train_images: torch.Tensor,
    config: RunConfig,
    run_dir: RunDir,
    device: torch.device,
    *,
    resume: bool = True,
) -> PretrainResult:
    """Train ``model`` with ``method`` on uint8 ``train_images`` (labels are never seen)."""
    collective = distributed_step.active()
    if collective is not None and collective.rank == 0:
        collective.broadcast_object({"run_id": run_dir.run_id, "resume": resume})  # the others join (follow)
    batch_norm = distributed_step.check_shards(config.pretrain.shards, collective, device, type(method).model.synced_bn)
    check_switches(config.pretrain, device)
    compiled = "compile_attack" if config.pretrain.compile_attack else "compile"
    if batch_norm == "per-shard" and collective is None and (config.pretrain.compile or config.pretrain.compile_attack):
        raise ConfigError(
            f"pretrain.{compiled}=True is invalid with pretrain.shards={config.pretrain.shards} in one "
            "process (per-shard forwards patch the model the compiler would trace): allowed "
            f"pretrain.{compiled}=false, pretrain.shards=1, or one process per shard under torchrun"
        )
    try:
        return _pretrain(method, model, train_images, config, run_dir, device, resume, collective, batch_norm)
    except Exception as error:
        if collective is None:
            raise
        if collective.rank == 0:  # a lost peer is a kill from outside: the checkpoint resumes (D7)
            lost = isinstance(error, distributed_step.PeerLost)
            run_dir.mark_failed(progress.error_line(error), traceback.format_exc(), resumable=lost)
        raise distributed_step.DistributedRunFailed(f"rank {collective.rank}: {progress.error_line(error)}") from error


def _pretrain(method, model, train_images, config, run_dir, device, resume, collective, batch_norm) -> PretrainResult:
    settings = config.pretrain
    rank = collective.rank if collective is not None else 0
    model.to(device).train()
    train_images = train_images.to(device)
    n = train_images.shape[0]
    batch = min(settings.batch_size, n)
    local = batch // (collective.world if collective is not None else 1)
    shards = _shards(config, device, collective, batch)
    per_epoch = steps_per_epoch(n, batch)
    total = settings.epochs * per_epoch
    warmup = int(round(settings.warmup_epochs * per_epoch))
    optimizer = build_optimizer(model.parameters(), settings)
    torch.manual_seed(config.seed)
    result = PretrainResult()
    checkpoint_path = run_dir.checkpoint
    start = 0

    def context(epoch: int, step: int, indices: torch.Tensor | None = None) -> StepContext:
        return StepContext(
            epoch=epoch,
            step=step,
            steps_per_epoch=per_epoch,
            device=device,
            generator=shards.generators[0],
            attack=config.attack,
            indices=indices,
            run_dir=run_dir,
            shards=shards,
            epochs=settings.epochs,
        )

    _setup(method, model, train_images, context(0, 0), collective)
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, device)
        restore_threads(state.get("threads"), method.name)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        _restore_rng(shards.generators, state["rng"], rank)
        start, result.history = state["step"], state["history"]
        result.resumed_from = start
        progress.log(f"  resumed {method.name} from step {start}/{total}")
    if collective is not None:
        collective.broadcast_state(model, parameters=True)
    swapped = distributed_step.convert_sync_batch_norm(model) if batch_norm == "sync" else []
    history = StepHistory(result.history, collective, method.name, batch)
    every = sync_interval(device, settings.host_sync, per_epoch)
    began = time.perf_counter()
    order = None
    try:
        with progress.task(f"pretrain {method.name}", total) as bar, fast_path(model, settings, device) as step_model:
            bar.advance(start)
            for step in range(start, total):
                epoch, position = divmod(step, per_epoch)
                if order is None or position == 0:
                    order = epoch_order(n, config.seed, epoch).to(device)
                indices = order[position * batch : (position + 1) * batch][rank * local : (rank + 1) * local]
                images = to_float(train_images[indices])
                lr = learning_rate(step, total, warmup, settings)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if collective is not None and batch_norm == "per-shard":
                    collective.broadcast_state(model, parameters=False)  # rank 0's running statistics
                step_context = context(epoch, step, indices)
                loss, logs = train_step(method, step_model, images, step_context, settings, batch_norm)
                history.add({"epoch": epoch, "step": step, "loss": None, "lr": lr}, loss, logs)
                checkpointing = (step + 1) % settings.checkpoint_every == 0 or step + 1 == total
                last = history.flush() if (step + 1) % every == 0 or checkpointing else None
                update(model, optimizer, loss, collective)
                method.after_step(model, step_context)  # e.g. a momentum target's EMA (bench.methodkit.momentum)
                bar.advance(1, **({"info": f"loss {last:.3f}"} if last is not None else {}))
                if checkpointing:
                    _save(model, optimizer, method, shards, collective, step + 1, result.history, run_dir, total)
    finally:
        distributed_step.restore_batch_norm(model, swapped)
    result.wall_s = time.perf_counter() - began
    result.steps = total
    return result


def _save(model, optimizer, method, shards, collective, step, history, run_dir: RunDir, total: int) -> None:
    """Rank 0 writes the checkpoint (every rank's generator in it) and the progress mark."""
    rng = _rng_state(shards.generators, collective)
    if collective is not None and collective.rank != 0:
        return
    save_torch_atomic(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "method": method.state_dict(),
            "rng": rng,
            "step": step,
            "history": history,
            "threads": torch.get_num_threads(),
        },
        run_dir.checkpoint,
    )
    run_dir.set_progress("pretraining", step=step, steps=total)
