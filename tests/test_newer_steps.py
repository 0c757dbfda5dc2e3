"""One training step of DynACL and DynACL-AIR against the released code's figures.

tests/data/newer_steps.json holds the loss, adversarial-example checksums, per-tensor gradient
checksums, the key encoder after its EMA update and the BN statistics of one released step
(PKU-ML/DYNACL train_DynACL.py ``train``; GodXuxilie/Enhancing_ACL_via_AIR pretraining.py
``train``) run on a CPU in float64 with the inputs of tests/newer_step_inputs.py; the fixture's
``procedure`` says how. Here our step gets the same weights, views and PGD starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import newer_step_inputs as inputs
import pytest
import torch

import bench.engine.attacks
from bench.config import AttackConfig
from bench.methodkit import registry
from bench.methodkit.method import StepContext

FIXTURE = json.loads((Path(__file__).parent / "data" / "newer_steps.json").read_text())
TOLERANCE = 1e-5


def inject(monkeypatch, module, views: list[torch.Tensor], starts: torch.Tensor) -> None:
    """The method's two augmentations return the fixture's views; PGD starts at x + δ."""
    queue = list(views)
    monkeypatch.setattr(module, "annealed_augment", lambda strength: lambda images, generator: queue.pop(0))
    monkeypatch.setattr(bench.engine.attacks, "random_start", lambda x, epsilon, generator=None: x + starts)


def context(epoch: int, epochs: int) -> StepContext:
    return StepContext(
        epoch,
        0,
        1,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
        AttackConfig(epsilon=inputs.EPSILON, step_size=inputs.STEP_SIZE, steps=inputs.PGD_STEPS),
        epochs=epochs,
    )


def assert_close(name: str, ours: list[float], released: list[float]) -> None:
    assert ours == pytest.approx(released, abs=TOLERANCE, rel=TOLERANCE), name


def compare_common(case: dict, loss: torch.Tensor, adversarial: torch.Tensor, gradients: dict) -> None:
    assert loss.item() == pytest.approx(case["loss"], abs=TOLERANCE)
    a1, a2 = adversarial.chunk(2)
    assert_close("a1", inputs.checksums("a1", a1), case["adversarial"]["a1"])
    assert_close("a2", inputs.checksums("a2", a2), case["adversarial"]["a2"])
    assert set(gradients) == set(case["gradients"])
    for name, grad in gradients.items():
        assert_close(f"grad {name}", inputs.checksums(name, grad), case["gradients"][name])


def record_adversarial(monkeypatch, module) -> dict:
    """The adversarial examples of one step (the newer methods attack through
    bench.methodkit.method.pretraining_pgd)."""
    import bench.methodkit.method

    seen = {}
    original = bench.methodkit.method.pgd

    def recording(*args, **kwargs):
        seen["out"] = original(*args, **kwargs)
        return seen["out"]

    monkeypatch.setattr(bench.methodkit.method, "pgd", recording)
    return seen


@pytest.mark.e2e
def test_dynacl_step_matches_the_released_step(monkeypatch):
    import methods.dynacl as module

    case = FIXTURE["dynacl"]
    cls = registry.get("dynacl")
    method = cls(cls.make_params({"form": "dynacl", "key_momentum": 0.99, "anneal_period": 50, "anneal_lambda": 2 / 3}))
    model = method.build_model("resnet18").double()
    inputs.fill_weights(model)  # the query, by our key names (the key's 'key.' keys are reset below)
    query_state = {k: v for k, v in model.state_dict().items() if not k.startswith("key.")}
    model.key.load_state_dict(inputs.key_weights(query_state))
    x1, x2 = inputs.images("dynacl/x1"), inputs.images("dynacl/x2")
    starts = torch.cat([inputs.start_noise("dynacl/start1", x1), inputs.start_noise("dynacl/start2", x2)])
    inject(monkeypatch, module, [x1, x2], starts)
    seen = record_adversarial(monkeypatch, module)
    model.train()
    loss, logs = method.training_step(
        model, x1, context(case["settings"]["epoch_1indexed"] - 1, case["settings"]["epochs"])
    )
    assert logs["adv_weight"] == pytest.approx(1.4)
    loss.backward()
    gradients = {name: p.grad for name, p in model.query_parameters()}
    compare_common(case, loss, seen["out"], gradients)
    for name, key in model.key.named_parameters():
        assert_close(f"key {name}", inputs.checksums(name, key), case["key_after"][name])
    for name, buffer in model.state_dict().items():
        if "running" in name:
            side, our_name = ("key", name.removeprefix("key.")) if name.startswith("key.") else ("query", name)
            released = case["buffers"][f"{side}/{our_name}"]
            assert_close(f"{side} {our_name}", inputs.checksums(our_name, buffer), released)


@pytest.mark.e2e
def test_dynacl_air_official_step_matches_the_released_step(monkeypatch):
    import methods.air as module

    case = FIXTURE["dynacl-air"]
    cls = registry.get("dynacl-air")
    method = cls(cls.make_params({"anneal_period": 50, "anneal_lambda": 2 / 3, "quirks": "official"}))
    model = method.build_model("resnet18").double()
    inputs.fill_weights(model)
    x1, x2, orig = inputs.images("air/x1"), inputs.images("air/x2"), inputs.images("air/orig")
    starts = torch.cat([inputs.start_noise("air/start1", x1), inputs.start_noise("air/start2", x2)])
    inject(monkeypatch, module, [x1, x2], starts)
    seen = record_adversarial(monkeypatch, module)
    model.train()
    loss, logs = method.training_step(model, orig, context(600, 1000))  # s = 1 - 50·12/1000 = 0.4
    assert (logs["strength"], logs["omega"]) == pytest.approx((0.4, 0.4))
    for ours, released in (("loss_clean", "nat"), ("loss_adv", "adv"), ("sir", "sir"), ("air", "air")):
        assert float(logs[ours]) == pytest.approx(case["parts"][released], abs=TOLERANCE), ours
    loss.backward()
    compare_common(case, loss, seen["out"], {name: p.grad for name, p in model.named_parameters()})
    for name, buffer in model.state_dict().items():
        if "running" in name:
            assert_close(name, inputs.checksums(name, buffer), case["buffers"][name])
