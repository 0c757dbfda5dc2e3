"""The pretraining loop every method shares: batches, schedule, AMP, checkpoint, resume.

A checkpoint holds the model, optimiser, method state (e.g. adaptive α), step, history and
every random state (view/attack generator, torch CPU and CUDA), and is written to a temp
file then renamed, so a killed run resumes bit-exactly (on CPU, with the thread count it
records) from its last checkpoint and a crash never leaves a corrupt file behind. The epoch's batch order is derived from
(seed, epoch), so it does not depend on where a run was resumed.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import progress
from bench.atomic import save_torch_atomic
from bench.checkpoints import CheckpointError
from bench.config import RunConfig
from bench.data import steps_per_epoch, to_float
from bench.method import Method, StepContext
from bench.models import ContrastiveModel
from bench.optim import build_optimizer, learning_rate
from bench.results import RunDir


@dataclass
class PretrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    steps: int = 0
    resumed_from: int = 0


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A pretraining checkpoint, read with the weights-only unpickler (tensors, numbers, strings:
    a tampered file cannot run code); a damaged one is one clear line saying how to recover."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types (EOFError, UnpicklingError, RuntimeError)
        raise CheckpointError(f"checkpoint {path} cannot be read ({progress.error_line(error)}): "
                              "rerun without --resume to start this run afresh") from None


def restore_threads(recorded: int | None, name: str) -> None:
    """Use the thread count the interrupted run had: CPU kernels sum in a thread-dependent order,
    so only the same count resumes bit-exactly. The caller restores its own count afterwards."""
    if recorded and recorded != torch.get_num_threads():
        progress.log(f"  {name}: resuming with {recorded} thread(s), as the interrupted run had")
        torch.set_num_threads(int(recorded))


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
    settings = config.pretrain
    model.to(device).train()
    train_images = train_images.to(device)
    n = train_images.shape[0]
    batch = min(settings.batch_size, n)
    per_epoch = steps_per_epoch(n, batch)
    total = settings.epochs * per_epoch
    warmup = int(round(settings.warmup_epochs * per_epoch))
    optimizer = build_optimizer(model.parameters(), settings)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    torch.manual_seed(config.seed)
    result = PretrainResult()
    checkpoint_path = run_dir.checkpoint
    start = 0
    setup_context = StepContext(epoch=0, step=0, steps_per_epoch=per_epoch, device=device, generator=generator,
                                attack=config.attack, run_dir=run_dir, epochs=settings.epochs)
    method.setup(model, train_images, setup_context)
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, device)
        restore_threads(state.get("threads"), method.name)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        _restore_rng(generator, state["rng"])
        start, result.history = state["step"], state["history"]
        result.resumed_from = start
        progress.log(f"  resumed {method.name} from step {start}/{total}")
    began = time.perf_counter()
    order = None
    with progress.task(f"pretrain {method.name}", total) as bar:
        bar.advance(start)
        for step in range(start, total):
            epoch, position = divmod(step, per_epoch)
            if order is None or position == 0:
                order = _epoch_order(n, config.seed, epoch).to(device)
            indices = order[position * batch : (position + 1) * batch]
            images = to_float(train_images[indices])
            lr = learning_rate(step, total, warmup, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            context = StepContext(epoch=epoch, step=step, steps_per_epoch=per_epoch, device=device, generator=generator,
                                  attack=config.attack, indices=indices, run_dir=run_dir, epochs=settings.epochs)
            model.train()
            with _autocast(device, settings.amp):
                loss, logs = method.training_step(model, images, context)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"{method.name}: loss became {value} at step {step} (lr {lr:.4g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            row = {"epoch": epoch, "step": step, "loss": value, "lr": lr}
            row.update({key: float(value) for key, value in logs.items()})
            result.history.append(row)
            bar.advance(1, info=f"loss {value:.3f}")
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == total:
                save_torch_atomic(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "method": method.state_dict(),
                        "rng": _rng_state(generator),
                        "step": step + 1,
                        "history": result.history,
                        "threads": torch.get_num_threads(),
                    },
                    checkpoint_path,
                )
                run_dir.set_progress("pretraining", step=step + 1, steps=total)
    result.wall_s = time.perf_counter() - began
    result.steps = total
    return result
