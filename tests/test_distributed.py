"""DDP on CPU with gloo and 2 processes (tests/ddp_ranks.py): the gathered gradient, DDP ≡ one process
with ``pretrain.shards=2``, kill and resume; the shard rules under DDP; SyncBatchNorm swapping. ``torchrun
bench pretrain`` itself (the run id, rank 0's writes, killed ranks and launcher):
tests/test_reliability_launch.py."""

from __future__ import annotations

from pathlib import Path

import ddp_ranks
import pytest
import torch
from torch import nn

from bench.config import ConfigError
from bench.engine import collective
from bench.engine.losses import nt_xent
from bench.engine.models import build_contrastive_model
from bench.runs import distributed

METHODS = ["acl", "advcl-ip"]  # eval-mode attack with gathered negatives; train-mode attack, per-shard BN, CE, α


def _run_ranks(out: Path) -> None:
    # forked, as `bench run --jobs N` forks its CPU workers: a spawned rank would import torch and the suite
    # again (about 7 s of CPU each before any work); what is tested is gloo across processes, not the start.
    # The ranks inherit this worker's modules (no process group is open here) and set their own thread count.
    # torch._dynamo and scikit-learn too, as `bench run` imports torch._dynamo before its forks: torch.optim
    # imports it at a rank's first step, and advcl-ip's pixel pseudo-labels import scikit-learn (2 to 3 s of CPU
    # each, per rank); this worker imports both at its own first optimiser step and advcl run anyway
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import torch._dynamo  # noqa: F401

    torch.multiprocessing.start_processes(
        ddp_ranks.main,
        args=(str(out / "rendezvous"), str(out), METHODS),
        nprocs=ddp_ranks.WORLD,
        join=True,
        start_method="fork",
    )


@pytest.fixture(scope="module")
def ranks_output(shared_folder):
    """What the 2 ranks wrote (about 10 s of CPU), once per session: this module's tests may be split between
    pytest-xdist's workers."""
    return shared_folder("ddp-ranks", _run_ranks)


@pytest.mark.e2e
def test_gathered_contrastive_gradient_equals_the_single_process_gradient(ranks_output):
    ranks = torch.load(ranks_output / "gather.pt", weights_only=True)
    torch.manual_seed(0)
    weight = torch.randn(5, 4, requires_grad=True)
    inputs = torch.randn(2, 6, 5)
    z1, z2 = (nn.functional.normalize(view @ weight, dim=1) for view in inputs)
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    assert torch.allclose(ranks["loss"], loss.detach(), atol=1e-6)
    assert torch.allclose(ranks["grad"], weight.grad, atol=1e-6)  # not W× it: each rank's loss is the whole batch's


@pytest.mark.e2e  # the 2 forked DDP ranks are a module fixture (~10 s)
@pytest.mark.parametrize("name", METHODS)
def test_two_ranks_train_the_weights_of_one_process_with_two_shards(name, ranks_output):
    ddp = torch.load(ranks_output / f"{name}-ddp.pt", weights_only=True)
    single = torch.load(ranks_output / f"{name}-single.pt", weights_only=True)
    # The first steps' losses are tight: a semantic difference (negatives not gathered, BN over the whole batch
    # instead of per shard) moves them by 1e-2 or more, float32 reduction order by ~5e-7. Later steps and the
    # weights inherit PGD's sign steps, which amplify that rounding (1e-2 by step six on another CPU,
    # docs/testing.md): they are compared within a tolerance that rounding respects.
    ddp_losses = [row["loss"] for row in ddp["A_history"]]
    single_losses = [row["loss"] for row in single["C_history"]]
    assert len(ddp_losses) == len(single_losses) == 4
    assert ddp_losses[:2] == pytest.approx(single_losses[:2], abs=1e-5), name
    assert ddp_losses == pytest.approx(single_losses, rel=5e-2), name
    assert single["C"].keys() == ddp["A"].keys()
    for key, value in single["C"].items():
        other = ddp["A"][key]
        if value.is_floating_point():
            difference = float((other - value).abs().max()) if value.numel() else 0.0
            scale = float(value.abs().max()) if value.numel() else 0.0
            assert difference <= 1e-2 * scale + 1e-5, f"{name}: {key} differs by {difference} (scale {scale})"
        else:
            assert torch.equal(other, value), key
    adaptive = single["C_method"]["adaptive"]  # advcl-ip: D̄ accumulated over the whole batch on every rank
    if adaptive is not None:
        assert ddp["A_method"]["adaptive"]["count"] == adaptive["count"] == 4 * 32
        assert ddp["A_method"]["adaptive"]["total"] == pytest.approx(adaptive["total"], rel=1e-5)


@pytest.mark.e2e  # the 2 forked DDP ranks are a module fixture (~10 s)
@pytest.mark.parametrize("name", METHODS)
def test_two_ranks_killed_and_resumed_end_where_an_uninterrupted_run_does(name, ranks_output):
    ddp = torch.load(ranks_output / f"{name}-ddp.pt", weights_only=True)
    assert ddp["B_resumed_from"] == 2
    for key, value in ddp["A"].items():
        assert torch.equal(ddp["B"][key], value), f"{name}: {key} differs after resume"
    assert [row["loss"] for row in ddp["A_history"]] == [row["loss"] for row in ddp["B_history"]]


class FakeCollective:
    world, rank = 2, 0


def test_shards_under_ddp_are_the_world_size_or_one_on_cuda():
    cpu = torch.device("cpu")
    assert collective.check_shards(2, FakeCollective(), cpu, synced=False) == "per-shard"
    with pytest.raises(ConfigError, match="pretrain.shards=3 is invalid under 2 processes: allowed 2"):
        collective.check_shards(3, FakeCollective(), cpu, synced=False)
    with pytest.raises(ConfigError, match="SyncBatchNorm .* CUDA only"):
        collective.check_shards(1, FakeCollective(), cpu, synced=False)
    with pytest.raises(ConfigError, match="released engine"):
        collective.check_shards(2, FakeCollective(), cpu, synced=True)  # RoCL: DDP + SyncBatchNorm
    assert collective.check_shards(2, FakeCollective(), torch.device("cuda"), synced=True) == "sync"
    assert collective.check_shards(1, None, cpu, synced=False) == "whole"
    assert collective.check_shards(2, None, cpu, synced=False) == "per-shard"
    assert collective.check_shards(2, None, cpu, synced=True) == "whole"


def test_sync_batch_norm_swaps_every_batch_norm_and_restores_the_originals():
    model = build_contrastive_model("small_cnn", ("normal", "pgd"), "advcl")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    originals = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    swapped = collective.convert_sync_batch_norm(model)
    assert len(swapped) == len(originals) > 0
    synced = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(module, nn.SyncBatchNorm) for module in synced)
    assert set(model.state_dict()) == set(before)
    assert synced[0].weight is originals[0].weight and synced[0].running_mean is originals[0].running_mean
    collective.restore_batch_norm(model, swapped)
    assert [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)] == originals
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_under_w_processes_unset_shards_become_w_and_published_or_given_ones_stay():
    """plan_for_world on a plan of seeds × methods with a teacher (deacl distils from simclr): every
    run whose shards neither the paper row nor the user sets is the run of `--set pretrain.shards=W`."""
    from bench.runs.plan import RunRequest, build_plan

    request = RunRequest(
        preset="paper",
        methods=("simclr", "deacl", "advcl"),
        seeds=("0", "1"),
        overrides={"data.name": "cifar10", "data.download": "true"},
        dry_run=True,
    )
    plan = distributed.plan_for_world(build_plan(request), request, 4)
    shards = {(run.method, run.config.seed): run.config.pretrain.shards for run in plan.runs}
    assert shards == {
        (name, seed): 2 if name == "advcl" else 4 for name in ("simclr", "deacl", "advcl") for seed in (0, 1)
    }  # advcl: its paper row's 2 (DataParallel on 2 GPUs)
    widened = build_plan(
        RunRequest(
            preset="paper",
            methods=("simclr", "deacl"),
            seeds=("0", "1"),
            overrides={"data.name": "cifar10", "data.download": "true", "pretrain.shards": "4"},
            dry_run=True,
        )
    )
    assert {run.run_id for run in widened.runs} <= {run.run_id for run in plan.runs}
    ids = {other.run_id for other in plan.runs}
    assert all(set(run.upstream.values()) <= ids for run in plan.runs)
    assert any(run.upstream for run in plan.runs)
    assert plan.base.jobs == 1
    given = RunRequest(methods=("simclr",), overrides={"pretrain.shards": "1"})
    assert distributed.plan_for_world(build_plan(given), given, 2).runs[0].config.pretrain.shards == 1
