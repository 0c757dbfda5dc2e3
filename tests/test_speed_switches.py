"""The switches toward the GPU ceiling keep CPU fp32 results identical or refuse in one line:
``pretrain.host_sync`` (when the loop reads its logged numbers) changes no loss or weight and no run
id; ``pretrain.compile_attack`` (CUDA graphs) is CUDA only. And the precision check's two hooks:
bf16 autocast on CPU only inside ``cpu_autocast``, PGD's sign steps recorded only inside
``recording_sign_steps``."""

from __future__ import annotations

import pytest
import torch

from bench.config import ConfigError, set_field, validate
from bench.engine.attacks import autocast, cpu_autocast, pgd, recording_sign_steps
from bench.methodkit import registry
from bench.runs import train
from bench.runs.plan import identity
from bench.store.results import RunDir


def _pretrain(digits, config, folder, **fields):
    for key, value in fields.items():
        setattr(config.pretrain, key, value)
    cls = registry.get("acl")
    method = cls(cls.make_params({}))
    torch.manual_seed(0)
    model = method.build_model("small_cnn")
    result = train.pretrain(method, model, digits.x_train[:96], config, RunDir(folder), torch.device("cpu"))
    return model, result


@pytest.mark.e2e
def test_reading_the_logged_numbers_once_per_epoch_changes_no_loss_or_weight(digits, tiny_config, tmp_path):
    tiny_config.pretrain.epochs = 2  # 3 steps per epoch: reads at steps 3 and 6 only
    tiny_config.pretrain.checkpoint_every = 100
    model, every_step = _pretrain(digits, tiny_config, tmp_path / "a")
    epoch_model, per_epoch = _pretrain(digits, tiny_config, tmp_path / "b", host_sync="epoch")
    assert per_epoch.history == every_step.history and len(per_epoch.history) == 6
    for (name, value), other in zip(model.state_dict().items(), epoch_model.state_dict().values(), strict=True):
        assert torch.equal(value, other), name


def test_sync_interval_per_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train.sync_interval(cpu, "auto", 7) == 1 and train.sync_interval(cuda, "auto", 7) == 10
    assert train.sync_interval(cuda, "step", 7) == 1
    assert train.sync_interval(cpu, "epoch", 7) == 7 and train.sync_interval(cuda, "epoch", 7) == 7


def test_host_sync_is_validated_and_not_part_of_the_run_identity(tiny_config):
    set_field(tiny_config, "pretrain.host_sync", "sometimes")
    with pytest.raises(ConfigError, match=r"pretrain.host_sync.*'auto', 'step', 'epoch'"):
        validate(tiny_config)
    cls = registry.get("acl")
    params = cls.make_params({})
    tiny_config.pretrain.host_sync = "epoch"
    deferred = identity(cls, tiny_config, params)
    tiny_config.pretrain.host_sync = "auto"
    assert deferred == identity(cls, tiny_config, params)
    tiny_config.pretrain.compile_attack = True  # it changes the arithmetic's schedule: part of the identity
    assert deferred != identity(cls, tiny_config, params)


def test_compile_attack_is_one_line_on_cpu(digits, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain.compile_attack=True is invalid on device 'cpu'.*'cuda' only"):
        _pretrain(digits, tiny_config, tmp_path, compile_attack=True)
    assert not RunDir(tmp_path).checkpoint.exists()


def test_cpu_autocast_only_inside_its_block_and_sign_steps_only_when_recorded():
    assert not isinstance(autocast("cpu", True), torch.autocast)
    with cpu_autocast():
        assert isinstance(autocast("cpu", True), torch.autocast)
        assert not isinstance(autocast("cpu", False), torch.autocast)
    assert not isinstance(autocast("cpu", True), torch.autocast)
    x = torch.rand(2, 3)
    with recording_sign_steps() as signs:
        pgd(lambda inputs: (inputs * torch.arange(3.0)).sum(), x, epsilon=0.1, step_size=0.05, steps=2)
    pgd(lambda inputs: inputs.sum(), x, epsilon=0.1, step_size=0.05, steps=2)  # outside: not recorded
    assert len(signs) == 2 and signs[0].dtype == torch.int8
    assert signs[0][:, 0].eq(0).all() and signs[0][:, 1:].eq(1).all()
