"""``bench speed``: the two paths compute the same loss on the same inputs (so their ratio compares
equal work), loader views reach the right shard, the projection arithmetic, and the command's files."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.cli.app import main
from bench.config import AttackConfig
from bench.engine.data import to_float
from bench.engine.shards import Shards
from bench.engine.views import StrongAugment, WeakAugment
from bench.methodkit import registry
from bench.methodkit.method import StepContext
from bench.products.reference_style import ReplayAugment, pil_transform
from bench.products.speed_measure import SpeedRow
from bench.products.speed_report import SpeedContext, pretraining_hours, ratios, speed_csv, speed_markdown

ATTACK = AttackConfig(epsilon=0.1, step_size=0.025, steps=3)


def _step(method, model, images, indices, reference_style: bool):
    generator = torch.Generator().manual_seed(3)
    context = StepContext(0, 0, 1, torch.device("cpu"), generator, ATTACK, indices, reference_style=reference_style)
    model.train()
    model.zero_grad(set_to_none=True)
    loss, _ = method.training_step(model, images, context)
    model.zero_grad(set_to_none=True)  # the reference-style ACL attack leaves weight gradients behind
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["simclr", "acl", "acl-ip", "rocl", "rocl-iphn", "advcl", "advcl-ip"])
def test_reference_style_and_fast_steps_compute_the_same_loss_and_gradients(name, digits):
    cls = registry.get(name)
    method = cls(cls.make_params(dict(cls.published("smoke", "digits").params)))
    torch.manual_seed(0)
    model = method.build_model("small_cnn")
    images, indices = to_float(digits.x_train[:32]), torch.arange(32)
    method.setup(model, digits.x_train[:32], StepContext(0, 0, 1, torch.device("cpu"), torch.Generator(), ATTACK))
    reference_method, reference_model = copy.deepcopy(method), copy.deepcopy(model)
    loss, grads = _step(method, model, images, indices, reference_style=False)
    reference_loss, reference_grads = _step(reference_method, reference_model, images, indices, reference_style=True)
    assert torch.allclose(loss, reference_loss, rtol=1e-5, atol=1e-6), (float(loss), float(reference_loss))
    assert grads.keys() == reference_grads.keys()
    for key, grad in grads.items():
        assert torch.allclose(grad, reference_grads[key], rtol=1e-4, atol=1e-6), key


def test_advcl_reference_style_recomputes_the_clean_views_at_every_pgd_step(digits, monkeypatch):
    cls = registry.get("advcl")
    method = cls(cls.make_params(dict(cls.published("smoke", "digits").params)))
    model = method.build_model("small_cnn")
    method.setup(model, digits.x_train[:16], StepContext(0, 0, 1, torch.device("cpu"), torch.Generator(), ATTACK))
    calls = {"normal": 0}
    original = model.forward

    def counting(x, bn="normal"):
        calls[bn] = calls.get(bn, 0) + 1
        return original(x, bn)

    monkeypatch.setattr(model, "forward", counting)
    images, indices = to_float(digits.x_train[:16]), torch.arange(16)
    for reference_style, expected in ((False, 3), (True, 3 + 3 * ATTACK.steps)):
        calls.clear()
        context = StepContext(
            0,
            0,
            1,
            torch.device("cpu"),
            torch.Generator().manual_seed(0),
            ATTACK,
            indices,
            reference_style=reference_style,
        )
        method.training_step(model, images, context)
        assert calls["normal"] == expected  # x1, x2, HFC once, or again at each PGD step as released


def test_replayed_loader_views_reach_the_shard_whose_generator_asks():
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    replay = ReplayAugment(generators)
    first, second = torch.arange(4.0)[:, None], 10 + torch.arange(4.0)[:, None]
    replay.load([first, second])
    rows = torch.zeros(2, 1)
    # RoCL's order: shard 0 asks for both its views, then shard 1
    assert replay(rows, generators[0]).flatten().tolist() == [0, 1]
    assert replay(rows, generators[0]).flatten().tolist() == [10, 11]
    assert replay(rows, generators[1]).flatten().tolist() == [2, 3]
    replay.load([first, second])
    shards = Shards(2, generators)  # SimCLR's order: view 1 of every shard, then view 2
    assert torch.equal(shards.map(replay, torch.zeros(4, 1)), first)
    assert torch.equal(shards.map(replay, torch.zeros(4, 1)), second)
    with pytest.raises(RuntimeError, match="asked for view 3"):
        shards.map(replay, torch.zeros(4, 1))


def test_pil_transforms_follow_the_view_recipes():
    import torchvision.transforms as T

    strong = pil_transform(StrongAugment(crop_scale=(0.2, 1.0)), 32)
    kinds = [type(step) for step in strong.transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomApply, T.RandomGrayscale, T.ToTensor]
    assert strong.transforms[0].scale == (0.2, 1.0) and strong.transforms[2].p == 0.8
    weak = pil_transform(WeakAugment(), 32)
    assert isinstance(weak.transforms[0], T.RandomCrop) and weak.transforms[0].padding == 4  # released pad 4 at 32 px
    assert pil_transform(object(), 32) is None


def _row(stage, method, path, rate, arch="resnet18", batch=512, **extra):
    return SpeedRow(stage, method, path, arch, batch, rate, (rate, rate), None, 3, rates=(rate,) * 3, **extra)


def test_table1_projection_uses_the_paper_schedules():
    rows = [_row("pretrain", "rocl", "fast", 1000.0), _row("pretrain", "advcl-ip", "fast", 500.0)]
    hours, lines = pretraining_hours(rows, ("rocl", "rocl-ip", "advcl", "advcl-ip"), "resnet18")
    # 97 batches of 512 per epoch; RoCL 1000 epochs at 1000 images/s, AdvCL 400 epochs at 500 (advcl via advcl-ip)
    expected = (2 * 1000 * 97 * 512 / 1000 + 2 * 400 * 97 * 512 / 500) / 3600
    assert hours == pytest.approx(expected)
    assert "rate of advcl-ip" in lines[2]
    assert pretraining_hours(rows, ("acl",), "resnet18")[0] is None  # nothing of ACL's family measured


def test_ratios_pair_each_fast_row_with_its_reference_beside_the_flop_ceiling():
    rows = [
        _row("pretrain", "acl", "fast", 300.0, "small_cnn", 64, flops_per_image=4e9, precision="fp32 (cpu)"),
        _row("pretrain", "acl", "reference", 200.0, "small_cnn", 64, flops_per_image=5e9, precision="fp32 (cpu)"),
        _row("pgd20", "classifier", "fast", 90.0, batch=4096),
        _row("pgd20", "classifier", "reference", 30.0, batch=256),
    ]
    found = ratios(rows)
    assert set(found) == {
        ("pretrain", "acl", "small_cnn", 64, "fast", "reference"),
        ("pgd20", "classifier", "resnet18", 4096, "fast", "reference"),
    }
    acl = found[("pretrain", "acl", "small_cnn", 64, "fast", "reference")]
    assert acl.summary.median == 1.5 and acl.ceiling == 1.25 and acl.above_ceiling
    assert found[("pgd20", "classifier", "resnet18", 4096, "fast", "reference")].summary.median == 3.0
    context = SpeedContext("cpu", "CPU", "smoke", 16, "2", 2, "v", "t", "bench speed --quick", True)
    assert "1.500,1.500,1.500,0.750,1.250,stable" in speed_csv(rows, context)
    text = speed_markdown(rows, context)
    assert "| 1.50× | [1.50, 1.50] [75%] | 1.25× | 3 | stable (above the FLOP ceiling" in text
    assert "fp32 (cpu)" in text and "## Targets" not in text  # no target is a CPU figure


@pytest.mark.e2e
def test_speed_command_writes_its_csv_and_markdown(tmp_path):
    status = main(
        [
            "speed",
            "--methods",
            "simclr",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--max-repeats",
            "1",
            "--eval-images",
            "8",
            "--no-autoattack",
            "--loader-workers",
            "0",
            "--device",
            "cpu",
            "--results-dir",
            str(tmp_path / "results"),
            "--reports-dir",
            str(tmp_path / "reports"),
            "--quiet",
        ]
    )
    assert status == 0
    lines = (tmp_path / "results" / "speed.csv").read_text().splitlines()
    assert lines[0].startswith("stage,method,path,precision,arch,batch,images_per_s")
    assert {line.split(",")[0] + ":" + line.split(",")[2] for line in lines[1:]} == {
        "pretrain:fast",
        "pretrain:reference",
        "pgd20:fast",
        "pgd20:reference",
    }
    assert "## Projections" in (tmp_path / "reports" / "speed.md").read_text()


@pytest.mark.e2e
def test_a_distilling_method_is_measured_with_an_untrained_teacher_and_its_teacher_run_is_not(tmp_path):
    """`bench speed --methods deacl`: the plan adds deacl's SimCLR teacher run, which is not selected,
    so only deacl's rows are written (its step forwards a frozen teacher built here, not pretrained)."""
    status = main(
        [
            "speed",
            "--methods",
            "deacl",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--max-repeats",
            "1",
            "--eval-images",
            "0",
            "--loader-workers",
            "0",
            "--device",
            "cpu",
            "--results-dir",
            str(tmp_path / "results"),
            "--reports-dir",
            str(tmp_path / "reports"),
            "--quiet",
        ]
    )
    assert status == 0
    lines = (tmp_path / "results" / "speed.csv").read_text().splitlines()[1:]
    assert {(line.split(",")[1], line.split(",")[2]) for line in lines} == {("deacl", "fast"), ("deacl", "reference")}
