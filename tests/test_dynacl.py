"""DynACL: the annealing schedules against the released loops, the EMA key encoder, the step against
an independent recomputation, the encoder handed to finetuning, presets quoted from train_DynACL.py."""

from __future__ import annotations

import copy

import pytest
import torch
from test_air import reference_nt_xent

from bench.config import AttackConfig, ConfigError, PretrainConfig
from bench.engine.annealing import annealed_augment, augmentation_strength, dynacl_adversarial_weight, reweighting_omega
from bench.engine.attacks import pgd
from bench.engine.data import to_float
from bench.engine.models import ContrastiveModel
from bench.engine.optim import learning_rate
from bench.engine.views import StrongAugment
from bench.methodkit import registry
from bench.methodkit.method import StepContext
from bench.methodkit.post import published
from bench.runs.plan import RunRequest, build_plan
from methods.dynacl import KeyEncoderModel

# --------------------------------------------------------------------------- schedules


def released_dynacl_schedule(epochs: int, period: int, swap: float) -> list[tuple[float, float]]:
    """train_DynACL.py's main loop, 1-indexed: (strength, weight_adv) of every epoch."""
    values, strength = [], None
    for epoch in range(1, epochs + 1):
        if epoch % period == 1 or period == 1:  # the data loader is rebuilt ("reload")
            strength = 1 - (epoch - 1) / epochs
        weight = min(1.0 + (epoch // period) * (period / epochs) * swap, 2)
        values.append((strength, weight))
    return values


def released_air_schedule(epochs: int, period: int = 50, swap: float = 2 / 3) -> list[tuple[float, float]]:
    """AIR pretraining.py --DynAug (and RCS DynACL_RCS.py): (strength, ω) of every epoch."""
    values = []
    for epoch in range(1, epochs + 1):
        strength = 1 - int((epoch - 1) / period) * period / epochs
        values.append((strength, swap * (1 - strength)))
    return values


@pytest.mark.parametrize("epochs, period", [(1000, 50), (8, 2), (7, 3), (5, 1)])
def test_schedules_match_the_released_loops(epochs, period):
    for epoch, (strength, weight) in enumerate(released_dynacl_schedule(epochs, period, 2 / 3)):
        assert augmentation_strength(epoch, epochs, period) == pytest.approx(strength, abs=1e-12)
        assert dynacl_adversarial_weight(epoch, epochs, period, 2 / 3) == pytest.approx(weight, abs=1e-12)
    for epoch, (strength, omega) in enumerate(released_air_schedule(epochs, period)):
        assert augmentation_strength(epoch, epochs, period) == pytest.approx(strength, abs=1e-12)
        assert reweighting_omega(augmentation_strength(epoch, epochs, period)) == pytest.approx(omega, abs=1e-12)


def test_schedule_hand_values():
    # E = 1000, P = 50: s = 1, 0.95, ..., 0.05; the released w rises one epoch before s falls.
    assert [augmentation_strength(e, 1000) for e in (0, 49, 50, 999)] == pytest.approx([1.0, 1.0, 0.95, 0.05])
    assert [dynacl_adversarial_weight(e, 1000) for e in (0, 48, 49, 999)] == pytest.approx(
        [1.0, 1.0, 1 + 0.05 * 2 / 3, 1 + 20 * 0.05 * 2 / 3]
    )
    assert reweighting_omega(0.05) == pytest.approx(0.95 * 2 / 3)
    assert dynacl_adversarial_weight(9, 10, 1, 5.0) == 2.0  # capped at 2
    with pytest.raises(ValueError, match="epoch=10 is invalid: allowed integers in \\[0, 10\\)"):
        augmentation_strength(10, 10)
    with pytest.raises(ValueError, match="epochs=0 is invalid"):
        augmentation_strength(0, 0)


def test_annealed_view_scales_every_strong_augmentation():
    view = annealed_augment(0.25)
    assert view.crop_scale == pytest.approx((1 - 0.9 * 0.25, 1.0))
    assert view.jitter == pytest.approx((0.1, 0.1, 0.1, 0.025))
    assert (view.jitter_p, view.grayscale_p) == pytest.approx((0.2, 0.05))
    full, acl = annealed_augment(1.0), StrongAugment(crop_scale=(0.1, 1.0))  # ACL's view at full strength
    assert full.crop_scale == pytest.approx(acl.crop_scale) and full.jitter == pytest.approx(acl.jitter)
    assert (full.jitter_p, full.grayscale_p) == pytest.approx((acl.jitter_p, acl.grayscale_p))


# --------------------------------------------------------------------------- key encoder


def build(name: str = "dynacl", **overrides):
    cls = registry.get(name)
    method = cls(cls.make_params({"anneal_period": 2, **overrides}))
    torch.manual_seed(0)
    return method, method.build_model("small_cnn")


def context(epoch: int = 0, epochs: int = 8, seed: int = 3) -> StepContext:
    return StepContext(
        epoch,
        0,
        1,
        torch.device("cpu"),
        torch.Generator().manual_seed(seed),
        AttackConfig(epsilon=0.1, step_size=0.025, steps=2),
        epochs=epochs,
    )


def test_key_encoder_starts_equal_is_never_optimised_and_is_checkpointed():
    method, model = build()
    assert isinstance(model, KeyEncoderModel)
    query = dict(model.query_parameters())
    for name, key in model.key.named_parameters():
        assert torch.equal(key, query[name]) and not key.requires_grad
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    (model(torch.rand(4, 3, 16, 16)).sum() + model.key(torch.rand(4, 3, 16, 16)).sum()).backward()
    before = copy.deepcopy(model.key.state_dict())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.key.state_dict().items())
    fresh = build()[1]
    fresh.load_state_dict(model.state_dict())  # resume: the key travels in state_dict
    assert any(key.startswith("key.encoder.") for key in model.state_dict())


def test_key_update_is_the_released_ema_of_parameters_only():
    method, model = build(key_momentum=0.9)
    with torch.no_grad():
        for _, parameter in model.query_parameters():
            parameter.add_(1.0)
        model.key.encoder.bns[0].branches["normal"].running_mean.fill_(3.0)
    old_key = {k: v.clone() for k, v in model.key.named_parameters()}
    query = {k: v.clone() for k, v in model.query_parameters()}
    buffers = {k: v.clone() for k, v in model.key.named_buffers()}
    model.update_key()
    for name, key in model.key.named_parameters():
        assert torch.allclose(key, 0.9 * old_key[name] + 0.1 * query[name], atol=1e-6), name
    assert all(torch.equal(buffers[k], v) for k, v in model.key.named_buffers())


def test_finetuning_gets_a_trainable_copy_of_the_key_encoder():
    method, model = build()
    with torch.no_grad():
        for parameter in model.key.encoder.parameters():
            parameter.mul_(0.5)
    encoder = method.encoder_for_finetuning(model)
    assert type(encoder) is ContrastiveModel and encoder is not model.key
    assert all(parameter.requires_grad for parameter in encoder.parameters())
    assert all(torch.equal(v, model.key.state_dict()[k]) for k, v in encoder.state_dict().items())
    simple, plain = build(form="air-rcs")
    assert type(plain) is ContrastiveModel and simple.encoder_for_finetuning(plain) is plain


def test_the_schedule_needs_the_total_epochs():
    method, model = build()
    with pytest.raises(ValueError, match="StepContext.epochs=0 is invalid: allowed the run's total pretraining epochs"):
        method.training_step(model, torch.rand(8, 3, 16, 16), context(epochs=0))


# --------------------------------------------------------------------------- the step


def reference_views(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    view = StrongAugment(
        crop_scale=(1 - 0.9 * strength, 1.0),
        jitter=(0.4 * strength,) * 3 + (0.1 * strength,),
        jitter_p=0.8 * strength,
        grayscale_p=0.2 * strength,
    )
    return torch.cat([view(images, generator), view(images, generator)])


@pytest.mark.e2e
@pytest.mark.parametrize("epoch, strength, weight", [(0, 1.0, 1.0), (5, 0.5, 1 + 3 * (2 / 8) * (2 / 3))])
def test_dynacl_step_matches_an_independent_recomputation(digits, epoch, strength, weight):
    """8 epochs, P = 2: epoch 5 (1-indexed 6) has s = 1 - 2·2/8 and w = 1 + ⌊6/2⌋·(2/8)·(2/3)."""
    method, model = build()
    images = to_float(digits.x_train[:16])
    reference = copy.deepcopy(model)
    model.train()
    loss, logs = method.training_step(model, images, context(epoch))
    loss.backward()
    assert (logs["strength"], logs["adv_weight"]) == pytest.approx((strength, weight))

    generator = torch.Generator().manual_seed(3)
    clean = reference_views(images, strength, generator)

    def routed(x: torch.Tensor, bn: str):  # view 1 through the query, view 2 through the key
        x1, x2 = x.chunk(2)
        return reference(x1, bn), reference.key(x2, bn)

    reference.eval()
    adversarial = pgd(
        lambda x: reference_nt_xent(*routed(x, "pgd")),
        clean,
        epsilon=0.1,
        step_size=0.025,
        steps=2,
        generator=generator,
    )
    reference.train()
    query_before = {name: p.detach().clone() for name, p in reference.query_parameters()}
    key_before = {name: p.detach().clone() for name, p in reference.key.named_parameters()}
    expected = 0.5 * (
        (2 - weight) * reference_nt_xent(*routed(clean, "normal"))
        + weight * reference_nt_xent(*routed(adversarial, "pgd"))
    )
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    ours = dict(model.query_parameters())
    for name, parameter in reference.query_parameters():
        assert torch.allclose(ours[name].grad, parameter.grad.float(), atol=1e-5, rtol=1e-4), name
    for name, key in model.key.named_parameters():
        assert key.grad is None
        ema = 0.99 * key_before[name] + 0.01 * query_before[name]  # the query of before the optimiser step
        assert torch.allclose(key, ema, atol=1e-6), name


def test_air_rcs_form_has_no_key_and_reweights_with_the_strength(digits):
    method, model = build(form="air-rcs")
    images = to_float(digits.x_train[:16])
    _, logs = method.training_step(model, images, context(5))
    assert logs["adv_weight"] == pytest.approx(1 + (2 / 3) * (1 - 0.5))  # ω = λ(1 - s): one step after the released w
    _, logs = method.training_step(model, images, context(1))
    assert logs["adv_weight"] == 1.0  # the released w is already 1 + (2/8)(2/3) in epoch 1


def test_variant_contrasts_four_views_with_the_second_through_the_key(digits, monkeypatch):
    method, model = build("dynacl-ip")
    seen = {}

    def capture(features, adversarial, **kwargs):  # as contrastive_loss, it asks for the variant's flags
        seen["features"], seen["adversarial"], seen["flags"] = features.detach(), tuple(adversarial), method.asymmetry()
        return features.sum() * 0

    monkeypatch.setattr(method, "contrastive_loss", capture)
    calls = []
    original = model.key.forward
    monkeypatch.setattr(model.key, "forward", lambda x, bn="normal": calls.append(bn) or original(x, bn))
    method.training_step(model, to_float(digits.x_train[:8]), context(0))
    assert seen["adversarial"] == (False, False, True, True) and seen["features"].shape[:2] == (8, 4)
    assert calls == ["pgd", "pgd", "pgd", "normal"]  # 2 attack steps, the adversarial and the clean stream


@pytest.mark.e2e
def test_dynacl_attacks_in_eval_mode_for_both_encoders(digits, monkeypatch):

    method, model = build()
    modes = []
    import bench.methodkit.method

    original = bench.methodkit.method.pgd  # DynACL attacks through bench.methodkit.method.pretraining_pgd

    def recording(loss_fn, x, **kwargs):
        return original(
            lambda inputs: modes.append((model.training, model.key.training)) or loss_fn(inputs), x, **kwargs
        )

    monkeypatch.setattr(bench.methodkit.method, "pgd", recording)
    model.train()
    method.training_step(model, to_float(digits.x_train[:8]), context(0))
    assert modes == [(False, False)] * 2 and model.training and model.key.training


# --------------------------------------------------------------------------- settings


def test_dynacl_parameters_are_checked():
    cls = registry.get("dynacl")
    with pytest.raises(ConfigError, match="form='moco' is invalid: allowed \\['dynacl', 'air-rcs'\\]"):
        cls.make_params({"form": "moco"})
    with pytest.raises(ConfigError, match="anneal_period=0 is invalid: allowed integers >= 1"):
        cls.make_params({"anneal_period": 0})
    with pytest.raises(ConfigError, match="post_clusters=1 is invalid: allowed integers >= 2"):
        build_plan(RunRequest(methods=("dynacl++",), method_params={"dynacl++": {"post_clusters": "1"}}))


def test_paper_presets_quote_train_dynacl():
    cls = registry.get("dynacl")
    params, pretrain = cls.published("paper", "cifar10").params, cls.published("paper", "cifar100").pretrain
    # --swap_param 2/3, --reload_frequency 50, resnet18_momentum(m=0.99)
    assert params["anneal_lambda"] == pytest.approx(2 / 3)
    assert (params["anneal_period"], params["key_momentum"]) == (50, 0.99)
    # LARS(lr=5.0, weight_decay=1e-6), --batch_size 512, --epochs 1000
    assert (pretrain["optimizer"], pretrain["lr"], pretrain["weight_decay"]) == ("lars-acl", 5.0, 1e-6)
    assert (pretrain["batch_size"], pretrain["epochs"]) == (512, 1000)
    # cosine_annealing(step=epoch, warmup_steps=10): lr = 5.0·(e+1)/10 in epoch e < 10, peak at epoch 10.
    config = PretrainConfig(**pretrain)
    per_epoch = 98
    total, warmup = 1000 * per_epoch, int(round(config.warmup_epochs * per_epoch))
    for epoch in range(10):
        assert learning_rate(epoch * per_epoch, total, warmup, config) == pytest.approx(5.0 * (epoch + 1) / 10)
    assert learning_rate(total - 1, total, warmup, config) == pytest.approx(1e-6, abs=1e-4)
    plus = published(cls, registry.spelling("dynacl++"), "paper", "cifar100").params
    assert plus["post_clusters"] == 10  # assign_label.py: for num_clusters in [10], whatever the dataset
    assert (plus["post_head_epochs"], plus["post_epochs"], plus["post_batch_size"]) == (10, 25, 512)
    assert tuple(plus["post_milestones"]) == (10, 20) and plus["post_attack_steps"] == 10
    assert registry.get("dynacl-hn").published("paper", "cifar10").params["anneal_period"] == 50  # the base row


def test_post_settings_follow_the_run_and_the_released_script():
    def stage(name, **params):
        (run,) = build_plan(RunRequest(methods=(name,), method_params={name: params} if params else {})).runs
        return run

    settings = stage("dynacl++").post_settings
    assert (settings.epsilon, settings.step_size, settings.augment) == (0.06, 0.015, False)
    assert (settings.clusters, settings.epochs, settings.attack_start, settings.reference_bn) == (10, 2, "noise", "")
    official = stage("dynacl++", quirks="official")
    assert official.post_settings.attack_start == "clean" and official.params.quirks == "official"
    assert stage("dynacl-air++", quirks="official").post_settings.reference_bn == "normal"
    assert stage("dynacl").post == "" and stage("dynacl").post_settings is None and stage("dynacl++").post == "pp"
    with pytest.raises(ConfigError, match="quirks='official' is invalid for 'dynacl'"):  # DynACL alone has none
        stage("dynacl", quirks="official")
    with pytest.raises(ConfigError, match="quirks='official' is invalid for 'dynacl-ip'"):  # nor the generic stage
        stage("dynacl-ip++", quirks="official")
