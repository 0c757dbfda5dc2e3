"""Pretraining harness: checkpoint/resume is bit-exact, crashes leave valid checkpoints."""

from __future__ import annotations

import pytest
import torch

from bench.methodkit import registry
from bench.methodkit.method import Method
from bench.runs.train import pretrain
from bench.store.results import RunDir


class Crash(RuntimeError):
    pass


def _train(method_name, digits, config, run_dir, *, crash_at=None, resume=False):
    cls = registry.get(method_name)
    method = cls(cls.make_params({}))
    torch.manual_seed(0)
    model = method.build_model(config.model.arch)
    if crash_at is not None:
        original = method.training_step

        def crashing(model_, images, ctx):
            if ctx.step == crash_at:
                raise Crash(f"simulated kill at step {ctx.step}")
            return original(model_, images, ctx)

        method.training_step = crashing
    result = pretrain(method, model, digits.x_train[:256], config, RunDir(run_dir), torch.device("cpu"), resume=resume)
    return model, result


@pytest.mark.e2e
@pytest.mark.parametrize("method_name", ["simclr", "acl"])
def test_kill_and_resume_is_bit_exact(method_name, digits, tiny_config, tmp_path):
    tiny_config.pretrain.epochs = 2  # 256 / 32 = 8 steps per epoch, 16 steps, checkpoints every 5
    reference, full = _train(method_name, digits, tiny_config, tmp_path / "full")
    with pytest.raises(Crash):
        _train(method_name, digits, tiny_config, tmp_path / "killed", crash_at=12)
    assert torch.load(RunDir(tmp_path / "killed").checkpoint, weights_only=True)["step"] == 10
    resumed, partial = _train(method_name, digits, tiny_config, tmp_path / "killed", resume=True)
    assert partial.resumed_from == 10
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert [row["loss"] for row in full.history] == [row["loss"] for row in partial.history]


def test_no_resume_starts_from_scratch(digits, tiny_config, tmp_path):
    _, first = _train("simclr", digits, tiny_config, tmp_path / "run")
    _, second = _train("simclr", digits, tiny_config, tmp_path / "run", resume=False)
    assert second.resumed_from == 0 and len(second.history) == len(first.history)


def test_nan_loss_is_reported_with_step(digits, tiny_config, tmp_path):
    class Broken(Method):
        name = "broken"

        def training_step(self, model, images, ctx):
            return model(images).sum() * float("nan"), {}

    method = Broken()
    model = method.build_model("small_cnn")
    with pytest.raises(FloatingPointError, match="step 0"):
        pretrain(method, model, digits.x_train[:64], tiny_config, RunDir(tmp_path), torch.device("cpu"))
