"""The fast path's switches: one read of the logged numbers per sync interval (same history, non-finite
loss still named by its step), torch.compile wiring, channels-last restored, bf16 PGD keeps fp32
projections, evaluation autocast and batch size."""

from __future__ import annotations

import pytest
import torch

from bench.config import ConfigError
from bench.engine.attacks import autocast, pgd
from bench.engine.models import Classifier, build_contrastive_model
from bench.evaluation.batching import CPU_BATCH, AutocastLogits, eval_batch_size
from bench.evaluation.evaluate import clean_accuracy
from bench.methodkit import registry
from bench.methodkit.method import Method
from bench.runs import train
from bench.store.results import RunDir


def _pretrain(name, digits, config, folder, **fields):
    for key, value in fields.items():
        setattr(config.pretrain, key, value)
    cls = registry.get(name)
    method = cls(cls.make_params({}))
    torch.manual_seed(0)
    model = method.build_model("small_cnn")
    return model, train.pretrain(method, model, digits.x_train[:128], config, RunDir(folder), torch.device("cpu"))


@pytest.mark.e2e
def test_reading_the_logged_numbers_every_few_steps_keeps_the_history(digits, tiny_config, tmp_path, monkeypatch):
    _, every_step = _pretrain("acl", digits, tiny_config, tmp_path / "a")
    monkeypatch.setattr(train, "sync_interval", lambda device, *rest: 3)
    _, deferred = _pretrain("acl", digits, tiny_config, tmp_path / "b")
    assert deferred.history == every_step.history
    assert list(deferred.history[0]) == ["epoch", "step", "loss", "lr", "loss_clean", "loss_adv"]


def test_a_deferred_read_still_names_the_step_of_a_non_finite_loss(digits, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "sync_interval", lambda device, *rest: 3)

    class BreaksAtTwo(Method):
        name = "breaks"

        def training_step(self, model, images, ctx):
            return model(images).sum() * (float("nan") if ctx.step == 2 else 1.0), {}

    method = BreaksAtTwo()
    with pytest.raises(FloatingPointError, match="at step 2"):
        train.pretrain(
            method,
            method.build_model("small_cnn"),
            digits.x_train[:128],
            tiny_config,
            RunDir(tmp_path),
            torch.device("cpu"),
        )
    assert not RunDir(tmp_path).checkpoint.exists()  # read before the step-5 checkpoint: nothing stored


@pytest.mark.e2e
def test_compile_wraps_the_model_the_step_calls_and_keeps_the_state_dict(digits, tiny_config, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append((module, kwargs)) or module)
    model, _ = _pretrain("simclr", digits, tiny_config, tmp_path, compile=True)
    assert len(compiled) == 1 and compiled[0][0] is model and compiled[0][1] == {"dynamic": False}
    assert not any(key.startswith("_orig_mod") for key in torch.load(RunDir(tmp_path).checkpoint)["model"])
    tiny_config.pretrain.shards = 2
    with pytest.raises(ConfigError, match="pretrain.compile=True is invalid with pretrain.shards=2"):
        _pretrain("simclr", digits, tiny_config, tmp_path / "b", compile=True)


@pytest.mark.parametrize("setting, inside", [("cuda", False), ("always", True), ("never", False)])
def test_channels_last_applies_as_set_and_is_undone(setting, inside):
    model = build_contrastive_model("small_cnn", ("normal",), "simclr")
    settings = train.PretrainConfig(channels_last=setting)
    with train.fast_path(model, settings, torch.device("cpu")):
        weight = model.encoder.convs[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == inside
    assert model.encoder.convs[0].weight.is_contiguous()


def test_pgd_under_bf16_autocast_keeps_its_iterate_and_projection_in_fp32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    x = torch.rand(8, 3, 4, 4)
    y = torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x).dtype == torch.bfloat16  # the forward really runs in bf16
        out = pgd(
            lambda inputs: torch.nn.functional.cross_entropy(net(inputs), y),
            x,
            epsilon=0.03,
            step_size=0.01,
            steps=3,
            generator=torch.Generator().manual_seed(0),
        )
    assert out.dtype == torch.float32
    assert (out - x).abs().max() <= 0.03 + 1e-7 and out.min() >= 0 and out.max() <= 1


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_is_bf16_on_cuda_only():
    assert not isinstance(autocast("cpu", True), torch.autocast)
    assert isinstance(autocast("cuda", True), torch.autocast)
    assert not isinstance(autocast("cuda", False), torch.autocast)


def test_evaluation_autocast_returns_fp32_logits_and_the_batch_is_auto_on_cpu(digits):
    model = Classifier(build_contrastive_model("small_cnn", ("normal",), "none"), 10, "normal").eval()
    x = digits.x_test[:20].float() / 255
    wrapped = AutocastLogits(model)
    assert wrapped(x).dtype == torch.float32 and torch.equal(wrapped(x), model(x))  # CPU: no autocast
    assert eval_batch_size(model, x, 64) == 64 and eval_batch_size(model, x, 0) == CPU_BATCH
    assert clean_accuracy(model, x, digits.y_test[:20], 0) == clean_accuracy(model, x, digits.y_test[:20], 7)


def test_amp_runs_the_model_calls_in_bf16_and_hands_back_fp32(monkeypatch):
    """CPU stands in for CUDA here (CPU autocast in bf16): the wrapper is what ``pretrain.amp`` adds."""
    monkeypatch.setattr(train, "autocast", lambda device, enabled: torch.autocast("cpu", dtype=torch.bfloat16))
    torch.manual_seed(0)
    model = build_contrastive_model("small_cnn", ("normal",), "simclr")
    x = torch.rand(4, 3, 16, 16)
    plain = model(x)
    with train.autocast_calls(model, torch.device("cuda"), True):
        out, features = model(x), model.features(x)
    assert out.dtype == torch.float32 and features.dtype == torch.float32
    assert not torch.equal(out, plain) and torch.allclose(out, plain, atol=5e-2)  # computed in bf16, returned fp32
    assert "forward" not in vars(model) and "features" not in vars(model)
    with train.autocast_calls(model, torch.device("cpu"), True):
        assert torch.equal(model(x), plain)  # CPU: no autocast
