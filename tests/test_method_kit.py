"""The method kit a plugin author uses: the momentum base and its after-step hook, the contract's size,
variants only for losses through ``contrastive_loss``, extra heads and export, broken plugins."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from fake_plugin import install_plugin
from report_stores import row
from torch import nn

from bench.cli.app import main
from bench.config import ConfigError
from bench.engine.checkpoints import classifier_state
from bench.engine.models import Classifier, ContrastiveModel
from bench.methodkit import registry
from bench.methodkit.method import Method
from bench.methodkit.momentum import MomentumMethod, MomentumModel, cosine_momentum
from bench.methodkit.spec import VariantSpec
from bench.methodkit.variants import make_variant
from bench.products.export import export_run, load_exported
from bench.runs.train import pretrain
from bench.store.atomic import save_torch_atomic
from bench.store.results import ResultRow, ResultsStore, RunDir

CONTRACT_AT_CFDBA13 = 40  # members of Method at cfdba13 by this count (architecture-2 §4 says 41)
# With the typed specs (bench.methodkit.spec): 12 loose class attributes became model, variant, teacher
# and published_settings (39 members before, 27 after); the post stage as a run option took post, pretrains_as
# and post_settings away and added post_forms (25).
CONTRACT_WITH_SPECS = 25


def contract_members(cls: type) -> list[str]:
    """Class attributes and methods defined on the class itself, dunders excluded."""
    return [name for name in vars(cls) if not (name.startswith("__") and name.endswith("__"))]


def test_the_method_contract_is_smaller_than_at_cfdba13():
    members = contract_members(Method)
    assert len(members) <= CONTRACT_WITH_SPECS < CONTRACT_AT_CFDBA13, members
    assert {"model", "variant", "teacher", "published_settings"} <= set(members)
    assert "bn_branches" not in members and "requires_teacher" not in members  # old spellings: LegacySpellings
    assert "after_step" in members and "needs_teacher" not in members and "set_teacher" not in members


# --------------------------------------------------------------------------- momentum


class ToyMomentum(MomentumMethod):
    """A BYOL-like step on the smoke CNN: the online projection regresses the target's (no attack)."""

    name = "toy-momentum"

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        return self.momentum_model(super().build_model(arch, in_channels), predictor=nn.Linear(128, 128))

    def training_step(self, model, images, ctx):
        with torch.no_grad():
            target = model.target(images)
        return (2 - 2 * torch.cosine_similarity(model.predictor(model(images)), target).mean()), {}


def toy(**params) -> ToyMomentum:
    return ToyMomentum(ToyMomentum.make_params(params))


def test_target_is_a_frozen_copy_outside_the_optimiser_and_in_the_state_dict():
    torch.manual_seed(0)
    method = toy()
    model = method.build_model("small_cnn")
    assert isinstance(model, MomentumModel)
    online = dict(model.online_parameters())
    for name, parameter in model.target.named_parameters():
        assert torch.equal(parameter, online[name]) and not parameter.requires_grad
    assert not any(name.startswith("predictor.") for name in online)
    state = model.state_dict()
    assert any(key.startswith("target.encoder.") for key in state) and "predictor.weight" in state


def test_tau_schedules():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    ctx = type("Ctx", (), {"step": 25, "epochs": 2, "steps_per_epoch": 50})()
    expected = 1 - 0.01 * (math.cos(math.pi * 25 / 100) + 1) / 2
    assert toy(target_momentum=0.99).momentum(ctx) == pytest.approx(expected)
    assert toy(target_momentum=0.9, momentum_schedule="constant").momentum(ctx) == 0.9
    with pytest.raises(ConfigError, match=r"momentum_schedule='step' is invalid: allowed \['constant', 'cosine'\]"):
        toy(momentum_schedule="step")
    with pytest.raises(ConfigError, match=r"target_momentum=1.5 is invalid"):
        toy(target_momentum=1.5)


def test_the_loop_moves_the_target_after_every_optimiser_step(digits, tiny_config, tmp_path):
    """after_step sees the updated online weights, once per step, and applies τ of that step."""
    tiny_config.pretrain.epochs = 2  # 48 images / 24 = 2 steps per epoch, 4 steps
    tiny_config.pretrain.batch_size = 24
    method = toy(target_momentum=0.9)
    torch.manual_seed(0)
    model = method.build_model("small_cnn")
    seen: list[dict] = []
    step, hook = method.training_step, method.after_step

    def recording_step(model_, images, ctx):
        seen.append({"step": ctx.step, "online": copy.deepcopy(dict(model.online_parameters()))})
        return step(model_, images, ctx)

    def recording_hook(model_, ctx):
        assert model_ is model
        entry = seen[-1]
        assert entry["step"] == ctx.step
        entry["moved"] = any(not torch.equal(p, entry["online"][n]) for n, p in model.online_parameters())
        before = {name: p.clone() for name, p in model.target.named_parameters()}
        hook(model_, ctx)
        tau, online = method.momentum(ctx), dict(model.online_parameters())
        for name, parameter in model.target.named_parameters():
            expected = tau * before[name] + (1 - tau) * online[name]
            assert torch.allclose(parameter, expected, atol=1e-6), name

    method.training_step, method.after_step = recording_step, recording_hook
    pretrain(method, model, digits.x_train[:48], tiny_config, RunDir(tmp_path / "run"), torch.device("cpu"))
    assert [entry["step"] for entry in seen] == [0, 1, 2, 3]
    assert all(entry["moved"] for entry in seen[1:])  # after optimizer.step() (step 0: warm-up lr 0)
    state = torch.load(RunDir(tmp_path / "run").checkpoint, weights_only=True)["model"]
    assert torch.equal(state["target.encoder.convs.0.weight"], model.target.encoder.convs[0].weight)


def test_finetuning_gets_the_online_or_target_network_without_extras():
    torch.manual_seed(0)
    method = toy()
    model = method.build_model("small_cnn")
    with torch.no_grad():
        for parameter in model.target.parameters():
            parameter.mul_(0.5)
    online = method.encoder_for_finetuning(model)
    assert type(online) is ContrastiveModel and all(p.requires_grad for p in online.parameters())
    assert set(online.state_dict()) == set(model.target.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in online.state_dict().items())
    method.finetune_network = "target"
    target = method.encoder_for_finetuning(model)
    assert all(torch.equal(v, model.target.state_dict()[k]) for k, v in target.state_dict().items())
    assert target is not model.target and all(p.requires_grad for p in target.parameters())


# --------------------------------------------------------------------------- variants


class NotInfoNCE(Method):
    name = "not-infonce"
    variant = VariantSpec(adversarial_views=True)

    def training_step(self, model, images, ctx):
        z1, z2 = model(images).chunk(2)
        return (z1 - z2).pow(2).mean(), {}


def test_a_variant_whose_base_never_reaches_contrastive_loss_fails_in_one_line(digits):
    from test_dynacl import context  # a StepContext on CPU

    variant = make_variant(NotInfoNCE, "ip")
    variant.name = "not-infonce-ip"
    method = variant()
    model = method.build_model("small_cnn", 3)
    with pytest.raises(ConfigError) as error:
        method.training_step(model, digits.x_train[:4].float() / 255, context())
    message = str(error.value)
    assert "\n" not in message and "'not-infonce-ip' would train exactly like 'not-infonce'" in message
    assert "variant = VariantSpec(uses_contrastive_loss=False)" in message


def test_no_variants_for_a_method_that_says_its_loss_is_not_contrastive():
    registry.available()
    for uses, expected in ((False, set()), (True, {"kit-plain-ip", "kit-plain-hn", "kit-plain-iphn"})):
        cls = type("Plain", (NotInfoNCE,), {"variant": VariantSpec(adversarial_views=True, uses_contrastive_loss=uses)})
        registry.register("kit-plain")(cls)
        try:
            registry.derive_variants()
            assert {name for name in registry.available() if name.startswith("kit-plain-")} == expected
        finally:
            for name in ("kit-plain", "kit-plain-ip", "kit-plain-hn", "kit-plain-iphn"):
                registry.unregister(name)


# --------------------------------------------------------------------------- heads and export


def test_an_mlp_head_does_not_break_export(tmp_path):
    torch.manual_seed(0)
    model = registry.get("simclr")().build_model("small_cnn")
    model.heads["predictor"] = nn.Sequential(nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 128))
    classifier = Classifier(model, 10, "normal").eval()
    store = ResultsStore(tmp_path / "r")
    run = store.run("mlp-head").create()
    save_torch_atomic(classifier_state(classifier), run.classifier("SLF"))
    run.write_json(run.config, {"method": "simclr", "data": {"name": "digits"}, "evaluate": {"epsilon": 0.1}})
    fields = {key: str(value) for key, value in row("mlp-head", "simclr", "SLF", "clean", 90.0).items()}
    store.record("mlp-head", [ResultRow.from_csv(fields)], {"finished": True})
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for fmt in ("robustbench", "torchscript"):
        out = export_run(tmp_path / "r", "mlp-head", "SLF", tmp_path / f"model-{fmt}.pt", fmt)
        with torch.no_grad():
            assert torch.equal(load_exported(out, allow_torchscript=fmt == "torchscript")(images), classifier(images))


# --------------------------------------------------------------------------- broken plugins


def test_a_broken_plugin_is_named_in_one_line_and_breaks_nothing_else(tmp_path, monkeypatch, capsys):
    source = "from bench.engine.views import StrongAugmentTypo\n"
    install_plugin(tmp_path, "acl_bench_broken_demo", source, "broken", monkeypatch)
    monkeypatch.setattr(registry, "_BROKEN", {})
    line = "plugin 'broken' (entry point acl_bench.methods) failed to import: ImportError: cannot import name"
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert f"bench: error: {line}" in err and len([row for row in err.splitlines() if "broken" in row]) == 1
    assert "acl " in out and "simclr" in out and f"not listed: {line}" in out
    with pytest.raises(ConfigError, match=r"method 'byorl' is not registered: allowed \[.*\]; plugin 'broken'"):
        registry.get("byorl")
    assert main(["run", "--methods", "acl", "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    assert "acl-smoke" in capsys.readouterr().out
