"""Step-level agreement with the released code (issue 9 §4; docs/fidelity-steps.md).

Each fixture in ``tests/data/fidelity/`` holds the figures of one training step of a released
code base, run on a CPU in float64 with the weights, views and attack noise of
``tests/fidelity_inputs.py``. Each test builds OUR model for the same method, injects the
same weights, views (``method.augment`` / ``method.weak_augment`` replaced by a replay) and
PGD starts (``bench.engine.attacks.random_start`` replaced by a replay), runs our step and compares
loss, adversarial examples, every parameter's gradient and the BN buffers within 1e-5 of the
tensor's own scale. What the fixture lists under ``excluded`` (documented deviations) is
not compared, and the list is checked to be exactly the one expected here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
from typing import Any

import fidelity_inputs as fi
import pytest
import torch

import bench.engine.attacks
import bench.evaluation.finetune
import bench.methodkit.method
from bench.config import AttackConfig, paper_preset
from bench.engine.checkpoints import load_encoder
from bench.evaluation.finetune import SchemeSettings, build_classifier, scheme_settings
from bench.methodkit import registry
from bench.methodkit.method import StepContext

RTOL = 1e-5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the released Normalize constants
ATOL = 1e-12  # for figures that are exactly zero (float64 rounding leaves ~1e-17 there)
INPUT_RTOL = 1e-9  # regenerated inputs must be the released step's inputs (formula drift check)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these steps are many tiny float64 ops, for which a second OpenMP thread on
    a shared machine costs far more in synchronisation than it gains (BatchNorm: ~100x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- injection


class Replay:
    """Returns prepared tensors in order, checking each call's shape; ``left`` must end empty."""

    def __init__(self, what: str, tensors: list[torch.Tensor]):
        self.what, self.left = what, list(tensors)

    def next(self, shape: torch.Size) -> torch.Tensor:
        assert self.left, f"{self.what}: called more often than the released step drew"
        tensor = self.left.pop(0)
        assert tensor.shape == shape, f"{self.what}: shape {tuple(shape)}, released {tuple(tensor.shape)}"
        return tensor.clone()


class ReplayAugment(Replay):
    """Stands in for a method's augmentation: returns the released step's views in order."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.next(x.shape)


def replay_starts(monkeypatch: pytest.MonkeyPatch, starts: list[torch.Tensor]) -> Replay:
    """``bench.engine.attacks.random_start`` returns x + δ with the released δ (inside [0, 1] by construction)."""
    replay = Replay("bench.engine.attacks.random_start", starts)

    def random_start(x: torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
        delta = replay.next(x.shape)
        assert float(delta.abs().max()) <= epsilon + 1e-12, "prepared start noise exceeds epsilon"
        return x + delta

    monkeypatch.setattr(bench.engine.attacks, "random_start", random_start)
    return replay


def spy_function(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[torch.Tensor]:
    """Record every tensor ``module.name`` returns (adversarial examples, views)."""
    outputs: list[torch.Tensor] = []
    original = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        result = original(*args, **kwargs)
        outputs.append(result.detach().clone())
        return result

    monkeypatch.setattr(module, name, spy)
    return outputs


@functools.lru_cache(maxsize=2)
def filled_model(name: str) -> torch.nn.Module:
    """The float64 ResNet-18 of a method with the fixture weights (built once per family: the
    variants share their base's model and keys). Callers get a deep copy."""
    cls = registry.get(name)
    model = cls(cls.make_params({})).build_model("resnet18").double()
    fi.fill_weights(model)
    return model


def build(name: str, params: dict[str, Any]):
    """Our method and a fresh copy of its model with the fixture weights, in train mode."""
    cls = registry.get(name)
    method = cls(cls.make_params(params))
    model = copy.deepcopy(filled_model(cls.variant.base or cls.name))
    return method, model.train()


def context(fixture: dict, epoch: int = 0, indices: torch.Tensor | None = None) -> StepContext:
    settings = fixture["settings"]
    attack = AttackConfig(epsilon=settings["epsilon"], step_size=settings["step_size"], steps=settings["pgd_steps"])
    return StepContext(
        epoch=epoch,
        step=0,
        steps_per_epoch=1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        attack=attack,
        indices=indices,
    )


# --------------------------------------------------------------------------- comparison


def compare_checksums(section: str, expected: dict, actual: dict, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    problems = []
    if set(expected) != set(actual):
        problems.append(
            f"{section}: names differ: only released {sorted(set(expected) - set(actual))[:5]}, "
            f"only ours {sorted(set(actual) - set(expected))[:5]}"
        )
    for name in sorted(set(expected) & set(actual)):
        problems += [f"{section} {name} {line}" for line in fi.differences(expected[name], actual[name], rtol, atol)]
    return problems


def step_figures(model: torch.nn.Module, loss: torch.Tensor, adversarial: dict[str, torch.Tensor]) -> dict:
    """Back-propagate our loss and collect what the fixture holds, under our key names."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    buffers = {name: b for name, b in model.named_buffers() if "normalize." not in name}
    return {
        "loss": float(loss.detach()),
        "adversarial": {name: fi.checksums(name, value) for name, value in adversarial.items()},
        "gradients": fi.state_checksums(gradients),
        "buffers": fi.state_checksums(buffers),
    }


def assert_agrees(fixture: dict, figures: dict, inputs: dict[str, torch.Tensor], excluded: set[str]) -> None:
    """Inputs first (same weights/views/noise as the released step), then every recorded figure."""
    assert {item["what"] for item in fixture["excluded"]} == excluded, "the fixture's excluded list changed"
    assert fixture["pattern_version"] == fi.PATTERN_VERSION
    regenerated = {name: fi.checksums(name, value) for name, value in inputs.items()}
    problems = compare_checksums("input", fixture["inputs"], regenerated, INPUT_RTOL, 0.0)
    assert not problems, "regenerated inputs differ from the released step's: " + "; ".join(problems)
    expected_loss = fixture["loss"]
    if not abs(figures["loss"] - expected_loss) <= RTOL * max(1.0, abs(expected_loss)):
        problems.append(f"loss: released {expected_loss!r}, ours {figures['loss']!r}")
    for section in ("views", "adversarial", "gradients", "buffers"):
        if section in fixture:
            problems += compare_checksums(section, fixture[section], figures[section])
    heading = f"{fixture['case']}: {len(problems)} figure(s) differ from {fixture['released']['repository']}"
    assert not problems, heading + ":\n" + "\n".join(problems[:20])


# --------------------------------------------------------------------------- ACL


@pytest.mark.e2e
def test_acl_step_matches_released(monkeypatch):
    """VITA-Group ACL train_simCLR.py --ACL_DS: PGD on both views (eval, BN pgd), ½[clean + adv NT-Xent]."""
    fixture = fi.load_fixture("acl")
    method, model = build("acl", fixture["settings"]["params"])
    x1, x2 = fi.images("acl/x1"), fi.images("acl/x2")
    start = fi.start_noise("acl/start", torch.cat([x1, x2]), fixture["settings"]["epsilon"])
    monkeypatch.setattr(method, "augment", ReplayAugment("ACL.augment", [x1, x2]))
    starts = replay_starts(monkeypatch, [start])
    adversarial = spy_function(monkeypatch, bench.methodkit.method, "pgd")  # ACL attacks through pretraining_pgd
    loss, _ = method.training_step(model, x1, context(fixture))
    assert not starts.left and len(adversarial) == 1
    a1, a2 = adversarial[0].chunk(2)
    figures = step_figures(model, loss, {"a1": a1, "a2": a2, "a1-x1": a1 - x1, "a2-x2": a2 - x2})
    assert_agrees(
        fixture,
        figures,
        {"x1": x1, "x2": x2, "start": start},
        excluded={"the PGD random start clamp", "view augmentation"},
    )


# --------------------------------------------------------------------------- RoCL (Asym-RoCL)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["rocl", "rocl-ip", "rocl-hn"])
def test_rocl_step_matches_released(monkeypatch, name):
    """Asym-RoCL rocl_train.py train(): PGD on x1 towards x2 (eval), one forward of [x1; x2; a], regulariser."""
    fixture = fi.load_fixture(name)
    method, model = build(name, fixture["settings"]["params"])
    x1, x2 = fi.images("rocl/x1"), fi.images("rocl/x2")
    start = fi.start_noise("rocl/start", x1, fixture["settings"]["epsilon"])
    monkeypatch.setattr(method, "augment", ReplayAugment("RoCL.augment", [x1, x2]))
    starts = replay_starts(monkeypatch, [start])
    adversarial = spy_function(monkeypatch, sys.modules[type(method).__module__], "pgd")
    loss, _ = method.training_step(model, x1, context(fixture))
    assert not starts.left and len(adversarial) == 1
    (a,) = adversarial
    figures = step_figures(model, loss, {"a": a, "a-x1": a - x1})
    assert_agrees(
        fixture,
        figures,
        {"x1": x1, "x2": x2, "start": start},
        excluded={"the batch split across GPUs", "view augmentation"},
    )


# --------------------------------------------------------------------------- AdvCL (Asym-AdvCL)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["advcl", "advcl-ip", "advcl-hn"])
def test_advcl_step_matches_released(monkeypatch, name):
    """Asym-AdvCL pretraining_advCL.py train(): x_adv and x_ce PGD in train mode, [x_adv, x1, x2, HFC] + 0.2·CE."""
    fixture = fi.load_fixture(name)
    settings = fixture["settings"]
    method, model = build(name, settings["params"])
    module = sys.modules[type(method).__module__]
    batch, epsilon = settings["batch"], settings["epsilon"]
    x1, x2, org = fi.images("advcl/x1"), fi.images("advcl/x2"), fi.images("advcl/org")
    starts = [fi.start_noise("advcl/start_cl", org, epsilon), fi.start_noise("advcl/start_ce", org, epsilon)]
    ignored = {int(k): v for k, v in settings["ignored_labels"].items()}
    labels = {k: fi.class_labels(f"advcl/pseudo_{k}", batch, k, ignored.get(k, 0)) for k in settings["pseudo_label_ks"]}
    method.pseudo_labels = labels
    if "mean_distance" in settings:  # adaptive α past its warm-up, with the released step's D̄
        method.adaptive.load_state_dict({"total": settings["mean_distance"], "count": 1})
    monkeypatch.setattr(method, "augment", ReplayAugment("AdvCL.augment", [x1, x2]))
    monkeypatch.setattr(method, "weak_augment", ReplayAugment("AdvCL.weak_augment", [org]))
    start_replay = replay_starts(monkeypatch, starts)
    adversarial = spy_function(monkeypatch, module, "pgd")
    views = spy_function(monkeypatch, module, "high_frequency_component")  # records our HFC view
    loss, _ = method.training_step(model, x1, context(fixture, settings["epoch"], torch.arange(batch)))
    assert not start_replay.left and len(adversarial) == 2 and len(views) == 1
    x_adv, x_ce = adversarial
    figures = step_figures(
        model, loss, {"x_adv": x_adv, "x_ce": x_ce, "x_adv-org": x_adv - org, "x_ce-org": x_ce - org}
    )
    figures["views"] = {"hfc": fi.checksums("hfc", views[0])}
    inputs = {
        "x1": x1,
        "x2": x2,
        "org": org,
        "start_cl": starts[0],
        "start_ce": starts[1],
        **{f"pseudo_{k}": value.double() for k, value in labels.items()},
    }
    assert_agrees(
        fixture,
        figures,
        inputs,
        excluded={
            "BN running statistics",
            "the batch split across GPUs",
            "the PGD random start clamp",
            "view augmentation",
        },
    )


# --------------------------------------------------------------------------- finetuning (RobustSSL)
# The per-step loss of bench.evaluation.finetune (``_set_mode`` + ``scheme_loss``, what ``finetune`` runs for
# each batch) on the released ACL checkpoint format loaded by ``load_encoder``. When the
# finetuning module is refactored, ``finetune_step`` is the one place to follow it.


@contextlib.contextmanager
def default_float64():
    """Modules built inside (load_encoder, build_classifier) hold float64 weights, loaded without rounding."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def robustssl_settings(scheme: str) -> SchemeSettings:
    """The ``robustssl`` protocol's settings for ACL on CIFAR-10 (head initialisation, dual BN)."""
    config = paper_preset()
    config.finetune.protocol = "robustssl"
    return scheme_settings(config, scheme, "acl")


def finetune_classifier(scheme: str, dual: bool, head: str):
    """Our classifier on the released ACL checkpoint of the fixture weights ('pgd' branch, or both).

    ``head``: 'protocol' = as the robustssl protocol builds it; 'formula' = a later step's head."""
    state = dict(filled_model("acl").state_dict())
    # The released steps ran with float64 ImageNet constants; ours, built in float32 and cast, hold
    # float32-rounded ones (a 7e-7 loss difference in AFF, past the tolerance of a few gradient sums).
    state["normalize.mean"] = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view_as(state["normalize.mean"])
    state["normalize.std"] = torch.tensor(IMAGENET_STD, dtype=torch.float64).view_as(state["normalize.std"])
    checkpoint = {"epoch": 1000, "state_dict": fi.acl_checkpoint(state)}
    with default_float64():
        encoder, info = load_encoder(checkpoint, "acl", branch="all" if dual else "pgd")
        classifier = build_classifier(
            encoder, fi.NUM_CLASSES, "pgd" if dual else info["branch"], scheme, robustssl_settings(scheme).head_init
        )
    if head == "formula":  # a later step's head (fixture settings)
        with torch.no_grad():
            fi.fill_weights(classifier.head, prefix="head")
    return classifier


def finetune_step(monkeypatch, fixture: dict, scheme: str, dual: bool = False) -> tuple[dict, dict]:
    """One step of our finetuning on the fixture's batch; returns (figures, regenerated inputs)."""
    settings = fixture["settings"]
    head = "protocol" if settings["head"] == "zeros" else settings["head"]
    classifier = finetune_classifier(scheme, dual, head)
    x, y = fi.images("ft/x"), fi.class_labels("ft/y", settings["batch"], settings["num_classes"])
    inputs = {"x": x, "y": y.double()}
    start, noise = fi.start_noise("ft/start", x, settings["epsilon"]), fi.trades_noise("ft/trades", x)
    adversarial: list[torch.Tensor] = []
    if scheme == "ALF":
        inputs["start"] = start
        replay_starts(monkeypatch, [start])
        adversarial = spy_function(monkeypatch, bench.evaluation.finetune, "pgd_cross_entropy")
    if scheme == "AFF":
        inputs["trades"] = noise
        replay_trades_noise(monkeypatch, noise)
        adversarial = spy_function(monkeypatch, bench.evaluation.finetune, "trades_kl_attack")
    steps = settings["attack_steps"] if scheme != "SLF" else 0
    step_settings = SchemeSettings(
        scheme=scheme,
        epochs=1,
        batch_size=settings["batch"],
        lr=0.01,
        milestones=(),
        momentum=0.9,
        weight_decay=2e-4,
        augment=False,
        train_attack_steps=steps,
        trades_beta=settings["trades_beta"],
        epsilon=settings["epsilon"],
        step_size=settings["step_size"],
        dual_bn=dual,
    )
    bench.evaluation.finetune.check_dual_bn(step_settings, classifier.backbone, classifier.bn)
    bench.evaluation.finetune._set_mode(classifier, scheme)
    loss = bench.evaluation.finetune.scheme_loss(classifier, step_settings, x, y, torch.Generator().manual_seed(0))
    examples = {"x_adv": adversarial[0], "x_adv-x": adversarial[0] - x} if adversarial else {}
    figures = step_figures(classifier, loss, examples)
    return figures, inputs


def replay_trades_noise(monkeypatch: pytest.MonkeyPatch, noise: torch.Tensor) -> Replay:
    """Our TRADES start draws torch.randn(shape, generator=...): that one call returns the released n."""
    replay = Replay("torch.randn (TRADES start)", [noise])
    original = torch.randn

    def randn(*size: Any, generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        if generator is None:
            return original(*size, **kwargs)
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, torch.Size)) else torch.Size(size)
        return replay.next(torch.Size(shape)).to(kwargs.get("dtype") or torch.float64)

    monkeypatch.setattr(torch, "randn", randn)
    return replay


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case, scheme, excluded",
    [
        ("robustssl-slf", "SLF", set()),
        ("robustssl-alf", "ALF", {"the PGD random start clamp"}),
        ("robustssl-aff", "AFF", {"the TRADES start clamp"}),
    ],
)
def test_finetune_step_matches_robustssl(monkeypatch, case, scheme, excluded):
    """RobustSSL train_loop: SLF (zero head, eval encoder), ALF (PGD on the frozen encoder), single-BN TRADES AFF."""
    fixture = fi.load_fixture(case)
    figures, inputs = finetune_step(monkeypatch, fixture, scheme)
    assert_agrees(fixture, figures, inputs, excluded)


@pytest.mark.e2e
def test_finetune_dual_bn_trades_matches_robustssl(monkeypatch):
    """RobustSSL's ACL AFF step (--dualBN 1, trades_loss_dual): clean through 'normal', adversarial through 'pgd'."""
    assert robustssl_settings("AFF").dual_bn, "the robustssl protocol must use dual-BN TRADES for ACL's AFF"
    fixture = fi.load_fixture("robustssl-aff-dual")
    figures, inputs = finetune_step(monkeypatch, fixture, "AFF", dual=True)
    assert_agrees(fixture, figures, inputs, {"the TRADES start clamp"})


@pytest.mark.parametrize("scheme", ["SLF", "ALF", "AFF"])
def test_finetune_head_starts_at_zero_as_robustssl(scheme):
    """RobustSSL zero-initialises the linear head for every scheme (utils.py get_model: fc.weight = zeros)."""
    classifier = finetune_classifier(scheme, dual=scheme == "AFF", head="protocol")
    assert torch.count_nonzero(classifier.head.weight) == 0 and torch.count_nonzero(classifier.head.bias) == 0
