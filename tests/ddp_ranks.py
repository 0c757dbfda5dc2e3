"""What each of the 2 gloo ranks of tests/test_distributed.py runs (forked from the test's process).

Every rank: the gathered NT-Xent gradient check, then per method a DDP pretraining run (A), a run
killed at step 3 and resumed (B), and on rank 0 alone the one-process ``shards=2`` run (C).
Results go to ``out`` as state dicts; the test compares them in the parent.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from bench.config import smoke_preset
from bench.engine import collective as collectives
from bench.engine.data import load_digits
from bench.engine.losses import nt_xent
from bench.methodkit import registry
from bench.runs.train import pretrain
from bench.store.results import RunDir

WORLD = 2
IMAGES = 128  # 4 steps of 32; checkpoints after steps 2 and 4
KILLED_AT = 3


class Killed(RuntimeError):
    pass


def tiny_config(shards: int):
    config = smoke_preset()
    config.pretrain.epochs, config.pretrain.batch_size, config.pretrain.checkpoint_every = 1, 32, 2
    config.pretrain.shards = shards
    config.pretrain.channels_last = "never"  # one memory layout in both paths: the comparison is to 1e-5
    config.attack.steps = 2
    return config


def train(name: str, run_dir: Path, images, *, resume: bool = False, kill_at: int | None = None):
    cls = registry.get(name)
    method = cls(cls.make_params(dict(cls.published("smoke", "digits").params)))
    torch.manual_seed(0)
    model = method.build_model("small_cnn")
    if kill_at is not None:
        original = method.training_step

        def killed(model_, batch, ctx):
            if ctx.step == kill_at:
                raise Killed(f"simulated kill at step {ctx.step}")
            return original(model_, batch, ctx)

        method.training_step = killed
    collective = collectives.active()
    if collective is not None and collective.rank != 0:
        assert collective.broadcast_object()["run_id"] == run_dir.name  # what ``follow`` receives
    result = pretrain(method, model, images, tiny_config(WORLD), RunDir(run_dir), torch.device("cpu"), resume=resume)
    return model, method, result


def gathered_gradient(collective, out: Path) -> None:
    """Each rank holds 3 of 6 instances; NT-Xent over the gathered batch, gradients averaged over ranks."""
    torch.manual_seed(0)
    weight = torch.randn(5, 4, requires_grad=True)
    inputs = torch.randn(2, 6, 5)  # two views of 6 instances
    local = inputs[:, collective.rank * 3 : (collective.rank + 1) * 3]
    z1, z2 = (torch.nn.functional.normalize(view @ weight, dim=1) for view in local)
    loss = nt_xent(collective.gather(z1), collective.gather(z2), 0.5)
    loss.backward()
    collective.average_gradients([weight])
    if collective.rank == 0:
        torch.save({"grad": weight.grad, "loss": loss.detach()}, out / "gather.pt")


def main(rank: int, init_file: str, out_dir: str, methods: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    collective = collectives.Collective(WORLD, rank, dist.group.WORLD, dist.new_group(backend="gloo"))
    collectives.attach(collective)
    out = Path(out_dir)
    images = load_digits(8).x_train[:IMAGES]  # the digits' own 8 px: what is tested is the collectives, not the size
    gathered_gradient(collective, out)
    for name in methods:
        model_a, method_a, result_a = train(name, out / f"{name}-A", images)
        try:
            train(name, out / f"{name}-B", images, kill_at=KILLED_AT)
            raise AssertionError("the killed run did not stop")
        except collectives.DistributedRunFailed:
            pass
        model_b, _, result_b = train(name, out / f"{name}-B", images, resume=True)
        if rank == 0:
            torch.save(
                {
                    "A": model_a.state_dict(),
                    "B": model_b.state_dict(),
                    "A_history": result_a.history,
                    "B_history": result_b.history,
                    "B_resumed_from": result_b.resumed_from,
                    "A_method": method_a.state_dict(),
                },
                out / f"{name}-ddp.pt",
            )
    collective.barrier()
    if rank == 0:
        collectives.attach(None)
        for name in methods:
            model_c, method_c, result_c = train(name, out / f"{name}-C", images)
            torch.save(
                {"C": model_c.state_dict(), "C_history": result_c.history, "C_method": method_c.state_dict()},
                out / f"{name}-single.pt",
            )
    dist.destroy_process_group()
