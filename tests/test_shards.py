"""``pretrain.shards``: shard layout, per-shard BatchNorm against a hand computation, generators,
config validation and hashing, and the paper presets' shard counts (quoted from the released scripts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.config import ConfigError
from bench.engine.shards import Shards, join_rows, per_shard_forwards, shard_seed, split_rows
from bench.methodkit import registry
from bench.runs.plan import RunRequest, build_plan


def test_a_shard_holds_its_instances_in_every_view_view_major():
    batch, shards = 6, 3
    x = torch.arange(2 * batch).float()[:, None]  # two views of a batch of 6: rows v·6 + i
    chunks = split_rows(x, shards, views=2)
    # shard 1 holds instances 2 and 3 of view 0 (rows 2, 3), then of view 1 (rows 8, 9): what rank 1 forwards
    assert chunks[1].flatten().tolist() == [2.0, 3.0, 8.0, 9.0]
    assert torch.equal(join_rows(chunks, views=2), x)


def test_one_shard_is_the_identity_without_copies():
    x = torch.randn(8, 3)
    generator = torch.Generator().manual_seed(0)
    seen = []
    out = Shards(1, [generator]).map(lambda rows, g: seen.append((rows, g)) or rows, x)
    assert out is x and seen[0][0] is x and seen[0][1] is generator
    assert Shards(1, [generator]).gather(x) is x


def test_map_gives_each_shard_its_generator():
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    out = Shards(2, generators).map(lambda rows, g: torch.rand(rows.shape, generator=g), torch.zeros(4, 1))
    expected = torch.cat([torch.rand(2, 1, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)])
    assert torch.equal(out, expected)


def test_shard_zero_keeps_the_run_seed_and_the_others_differ():
    assert shard_seed(7, 0) == 7
    assert shard_seed(7, 1) == shard_seed(7, 1) != shard_seed(7, 2)
    assert shard_seed(7, 1) != shard_seed(8, 1)


def _hand_batch_norm(x: torch.Tensor, weight, bias, eps) -> torch.Tensor:
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("route", ["model call", "direct BatchNorm call"])
def test_per_shard_forwards_normalise_each_shard_and_only_shard_zero_moves_the_running_statistics(dim, route):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3) if dim == 2 else nn.BatchNorm1d(3)
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    model = nn.Sequential(bn)
    batch, views = 4, 2
    x = torch.randn(views * batch, 3, 5, 5) * 3 + 1 if dim == 2 else torch.randn(views * batch, 3) * 3 + 1
    with per_shard_forwards(model, shards=2, batch=batch):
        out = model(x) if route == "model call" else model[0](x)
    expected = torch.empty_like(x)
    for shard in range(2):
        rows = [v * batch + i for v in range(views) for i in range(shard * 2, shard * 2 + 2)]
        expected[rows] = _hand_batch_norm(x[rows], bn.weight, bn.bias, bn.eps)
    assert torch.allclose(out, expected, atol=1e-5)
    shard0 = x[[v * batch + i for v in range(views) for i in range(2)]]
    dims = [0] + list(range(2, x.dim()))
    assert torch.allclose(bn.running_mean, 0.1 * shard0.mean(dim=dims), atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 * 1 + 0.1 * shard0.var(dim=dims, unbiased=True), atol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    assert "forward" not in vars(bn) and "forward" not in vars(model)  # the patches are gone afterwards
    model.eval()
    with per_shard_forwards(model, shards=2, batch=batch):
        assert torch.equal(
            model(x),
            nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps),
        )


def test_per_shard_forwards_run_each_shard_on_its_own_rows():
    """The shapes a DDP rank sees: one call per shard on that shard's rows of every view."""
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x * 2

    model = Recorder()
    x = torch.arange(8.0)[:, None]  # two views of a batch of 4
    with per_shard_forwards(model, shards=2, batch=4):
        out = model(x)
    assert [rows.flatten().tolist() for rows in seen] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert torch.equal(out, x * 2)


def test_per_shard_batch_norm_refuses_a_forward_that_is_not_views_of_the_batch():
    model = nn.Sequential(nn.BatchNorm1d(2))
    with per_shard_forwards(model, shards=2, batch=4), pytest.raises(ValueError, match="not a whole number of views"):
        model[0](torch.randn(6, 2))


def test_shards_must_divide_the_batch_and_enter_the_hash():
    with pytest.raises(ConfigError, match="pretrain.batch_size=64 is invalid"):
        build_plan(RunRequest(methods=("simclr",), overrides={"pretrain.shards": "3"}))
    with pytest.raises(ConfigError, match="pretrain.shards=0 is invalid"):
        build_plan(RunRequest(methods=("simclr",), overrides={"pretrain.shards": "0"}))
    one = build_plan(RunRequest(methods=("simclr",))).runs[0]
    two = build_plan(RunRequest(methods=("simclr",), overrides={"pretrain.shards": "2"})).runs[0]
    assert one.run_id != two.run_id and one.pretrain_key != two.pretrain_key


@pytest.mark.parametrize(
    "name, shards",
    [
        # Asym-AdvCL/pretraining_advCL.py: nn.DataParallel over every GPU (one is refused); README: "2 Tesla V100"
        ("advcl", 2),
        ("advcl-ip", 2),
        ("advcl-hn", 2),
        ("advcl-iphn", 2),
        # Asym-RoCL/shell/rocl-*.sh: torch.distributed.launch --nproc_per_node=2 ... --batch-size=256
        ("rocl", 2),
        ("rocl-ip", 2),
        ("rocl-hn", 2),
        ("rocl-iphn", 2),
        # VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py: model.cuda() on one GPU
        ("acl", 1),
        ("acl-ip", 1),
        ("simclr", 1),
    ],
)
def test_paper_presets_shard_as_the_released_scripts_ran(name, shards):
    # a dry run with --download resolves AdvCL's released pseudo-labels without fetching them
    request = RunRequest(preset="paper", methods=(name,), overrides={"data.download": "true"}, dry_run=True)
    run = build_plan(request).runs[0]
    assert run.config.pretrain.shards == shards
    assert run.config.pretrain.batch_size == 512


def test_rocl_synchronises_batch_norm_and_advcl_does_not():
    assert registry.get("rocl-ip").model.synced_bn is True  # released: DDP + SyncBatchNorm
    assert registry.get("advcl").model.synced_bn is False  # released: DataParallel, per-GPU BN
