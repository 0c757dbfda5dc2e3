"""Every registered method trains on the digits; RoCL/AdvCL specifics; the papers' presets.

Smoke: 20 steps on one fixed batch with the view/attack generator re-seeded every step, so
the objective is the same function of the weights at each step (up to the attack adapting
to the model); its loss must be finite and fall, and every adversarial view must lie within
ε of its clean source and in [0, 1] (``pgd`` is wrapped in each method's module).
"""
from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from bench import registry
from bench.attacks import pgd
from bench.config import AttackConfig
from bench.data import to_float
from bench.method import StepContext
from bench.views import high_frequency_component

import methods.advcl as advcl_module
from methods.advcl import AdvCL, PseudoLabelUnpickler, load_pseudo_label_file

EPSILON, STEP_SIZE, PGD_STEPS, BATCH, SMOKE_STEPS = 0.1, 0.025, 2, 64, 20
METHOD_NAMES = list(registry.available())


def make_context(step: int = 0, *, seed: int = 0, indices=None, run_dir=None, epoch: int = 0,
                 epochs: int = 1) -> StepContext:
    return StepContext(epoch, step, 1, torch.device("cpu"), torch.Generator().manual_seed(seed),
                       AttackConfig(epsilon=EPSILON, step_size=STEP_SIZE, steps=PGD_STEPS), indices, run_dir,
                       epochs=epochs)


def build(name: str, **overrides):
    """A method with its smoke-preset parameters (plus ``overrides``) and its small CNN."""
    cls = registry.get(name)
    method = cls(cls.make_params({**cls.preset_params("smoke", "digits"), **overrides}))
    torch.manual_seed(0)
    return method, method.build_model("small_cnn")


class PGDRecorder:
    """Wraps ``pgd`` in a method's module: records inputs, outputs and the model mode per loss call."""

    def __init__(self, model, original):
        self.model, self.original, self.calls = model, original, []

    def __call__(self, loss_fn, x, **kwargs):
        modes = []

        def recorded_loss(inputs):
            modes.append(self.model.training)
            return loss_fn(inputs)

        out = self.original(recorded_loss, x, **kwargs)
        self.calls.append({"x": x.detach().clone(), "out": out.detach().clone(), "modes": modes, **kwargs})
        return out


def record_pgd(monkeypatch, method, model) -> PGDRecorder:
    module = sys.modules[type(method).__module__]
    recorder = PGDRecorder(model, getattr(module, "pgd", None))
    if recorder.original is not None:
        monkeypatch.setattr(module, "pgd", recorder)
    return recorder


@pytest.fixture(scope="module")
def batch(digits):
    indices = torch.arange(BATCH)
    return digits.x_train[:BATCH], indices


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_smoke_steps_lower_the_loss_and_keep_adversaries_in_the_ball(name, batch, monkeypatch):
    images_uint8, indices = batch
    method, model = build(name)
    method.setup(model, images_uint8, make_context(indices=None))
    recorder = record_pgd(monkeypatch, method, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, losses = to_float(images_uint8), []
    for step in range(SMOKE_STEPS):
        model.train()
        loss, logs = method.training_step(model, images, make_context(step, indices=indices))
        assert torch.isfinite(loss) and all(np.isfinite(float(value)) for value in logs.values()), (step, logs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first, f"{name}: loss did not fall: {np.round(losses, 4).tolist()}"
    if type(method).has_adversarial_views:
        assert recorder.calls, f"{name} made no adversarial views"
    for call in recorder.calls:
        assert call["epsilon"] == pytest.approx(EPSILON)
        assert (call["out"] - call["x"]).abs().max() <= EPSILON + 1e-6
        assert call["out"].min() >= 0 and call["out"].max() <= 1
        assert not torch.equal(call["out"], call["x"])


# --------------------------------------------------------------------------- attack modes


def test_rocl_attacks_in_eval_mode_and_restores_train_mode(batch, monkeypatch):
    images_uint8, indices = batch
    method, model = build("rocl")
    recorder = record_pgd(monkeypatch, method, model)
    model.train()
    method.training_step(model, to_float(images_uint8), make_context(indices=indices))
    assert len(recorder.calls) == 1 and recorder.calls[0]["modes"] == [False] * PGD_STEPS
    assert model.training


def test_rocl_paper_attack_settings_override_the_harness(batch, monkeypatch):
    images_uint8, indices = batch
    method, model = build("rocl", attack_steps="3", attack_step_size="0.007")  # CLI strings are coerced
    assert method.params.attack_steps == 3 and method.params.attack_step_size == 0.007
    recorder = record_pgd(monkeypatch, method, model)
    method.training_step(model, to_float(images_uint8), make_context(indices=indices))
    call = recorder.calls[0]
    assert (call["steps"], call["step_size"], call["epsilon"]) == (3, 0.007, EPSILON) and len(call["modes"]) == 3


@pytest.mark.parametrize("name", ["rocl", "rocl-ip"])
def test_rocl_official_and_formula_paths_give_the_released_loss_scale(name, batch):
    """Both paths compute the released (1/3N)·Σ of the six pair terms: same value, not ×2 apart."""
    images_uint8, indices = batch
    values = {}
    for quirks in ("none", "official"):
        method, model = build(name, quirks=quirks)
        _, logs = method.training_step(model, to_float(images_uint8), make_context(indices=indices))
        values[quirks] = float(logs["loss_contrast"])
    assert values["official"] == pytest.approx(values["none"], rel=1e-5)


def test_advcl_attacks_in_train_mode(batch, monkeypatch):
    images_uint8, indices = batch
    method, model = build("advcl-ip")
    method.setup(model, images_uint8, make_context())
    recorder = record_pgd(monkeypatch, method, model)
    model.eval()  # the attack must switch to train mode anyway (and restore the caller's mode)
    method.training_step(model, to_float(images_uint8), make_context(indices=indices))
    assert len(recorder.calls) == 2  # x_adv (contrastive, BN pgd) and x_ce (pseudo-label CE, BN pgd_ce)
    assert all(call["modes"] == [True] * PGD_STEPS for call in recorder.calls)
    assert not model.training


@pytest.mark.parametrize("name", ["advcl", "advcl-ip"])
def test_advcl_cached_clean_embeddings_give_the_released_adversary(name, batch):
    """Reusing x1/x2/HFC embeddings in every PGD step = recomputing them (released code)."""
    images_uint8, indices = batch
    method, model = build(name, adv_weight=1.2, quirks="official")
    method.setup(model, images_uint8, make_context())
    model.train()
    generator = torch.Generator().manual_seed(5)
    images = to_float(images_uint8)
    x1, x2 = method.augment(images, generator), method.augment(images, generator)
    org = method.weak_augment(images, generator)
    hfc = high_frequency_component(org, radius=method.hfc_radius(images))
    with torch.no_grad():
        clean = [model(view, "normal") for view in (x1, x2, hfc)]
    ours, _ = method.adversaries(model, org, clean, indices, make_context(seed=9))

    def recomputed(inputs):
        views = [model(inputs, "pgd")] + [model(view, "normal") for view in (x1, x2, hfc)]
        return method.attack_objective(torch.stack(views, dim=1))

    released = pgd(recomputed, org, epsilon=EPSILON, step_size=STEP_SIZE, steps=PGD_STEPS,
                                generator=torch.Generator().manual_seed(9))
    assert torch.allclose(ours, released, atol=1e-6)


def test_advcl_hfc_radius_scales_with_image_size():
    method = AdvCL()
    assert method.hfc_radius(torch.zeros(1, 3, 32, 32)) == 8
    assert method.hfc_radius(torch.zeros(1, 3, 16, 16)) == 4
    assert method.hfc_radius(torch.zeros(1, 3, 2, 2)) == 1


# --------------------------------------------------------------------------- pseudo-labels


def test_advcl_pixel_pseudo_labels_have_the_right_shapes_and_are_cached(digits, tmp_path, monkeypatch):
    images = digits.x_train[:300]
    ks = (2, 10, 50, 500)
    method, model = build("advcl", pseudo_label_ks=ks)
    assert {name: head.out_features for name, head in model.heads.items()} == {f"pseudo_{k}": k for k in ks}
    method.setup(model, images, make_context(run_dir=tmp_path))
    labels = method.pseudo_labels
    for k in ks:
        assert labels[k].shape == (300,) and labels[k].dtype == torch.long
        assert labels[k].min() >= 0 and labels[k].max() < min(k, 300)
    assert len(torch.unique(labels[10])) == 10  # the k-means clusters are all used
    cache = tmp_path / "pseudo_labels.npz"
    with np.load(cache, allow_pickle=False) as archive:
        assert {f"pseudo_train_{k}" for k in ks} <= set(archive.files)
    # A resumed run reuses the cache instead of clustering again.
    monkeypatch.setattr(advcl_module, "cluster_pseudo_labels", lambda *a, **k: pytest.fail("cache not reused"))
    again, model_again = build("advcl", pseudo_label_ks=ks)
    again.setup(model_again, images, make_context(run_dir=tmp_path))
    assert all(torch.equal(again.pseudo_labels[k], labels[k]) for k in ks)


def test_advcl_clusters_the_features_of_a_named_encoder(digits, tmp_path):
    images = digits.x_train[:120]
    trained, trained_model = build("advcl")
    path = tmp_path / "encoder.pt"
    torch.save({"format": "acl-bench", "model": trained_model.state_dict(), "arch": "small_cnn",
                "bn_branches": list(trained.bn_branches), "projector": trained.projector,
                "normalization": trained.normalization, "finetune_bn": trained.finetune_bn}, path)
    method, model = build("advcl", pseudo_label_ks=(2, 10), pseudo_label_encoder=str(path))
    method.setup(model, images, make_context(run_dir=tmp_path))
    assert method.pseudo_labels[10].shape == (120,) and method.pseudo_labels[10].max() < 10
    with np.load(tmp_path / "pseudo_labels.npz", allow_pickle=False) as archive:
        assert str(archive["source"]) == f"encoder:{path}"


def test_advcl_loads_a_label_file_and_checks_its_length(digits, tmp_path):
    images = digits.x_train[:50]
    ks = (2, 10)
    table = {f"pseudo_train_{k}": np.arange(50, dtype=np.int32) % k for k in ks}
    path = tmp_path / "labels.npz"
    np.savez(path, **table)
    method, model = build("advcl", pseudo_label_ks=ks, pseudo_labels=str(path))
    method.setup(model, images, make_context())
    assert torch.equal(method.pseudo_labels[10], torch.arange(50) % 10)
    short, model_short = build("advcl", pseudo_label_ks=ks, pseudo_labels=str(path))
    with pytest.raises(ValueError, match="50 entries but the train set has 40"):
        short.setup(model_short, images[:40], make_context())
    missing, model_missing = build("advcl", pseudo_label_ks=(2, 7), pseudo_labels=str(path))
    with pytest.raises(KeyError, match="pseudo_train_7"):
        missing.setup(model_missing, images, make_context())


def test_restricted_unpickler_loads_numpy_and_torch_label_pickles(tmp_path):
    numpy_file, torch_file = tmp_path / "numpy.pkl", tmp_path / "torch.pkl"
    for protocol in (2, 4, 5):
        numpy_file.write_bytes(pickle.dumps({"pseudo_train_2": np.array([0, 1, 1], dtype=np.int32),
                                             "pseudo_test_2": np.array([1], dtype=np.int32)}, protocol=protocol))
        torch_file.write_bytes(pickle.dumps({"pseudo_train_2": torch.tensor([1, 0, 1])}, protocol=protocol))
        assert load_pseudo_label_file(numpy_file, (2,))[2].tolist() == [0, 1, 1]
        assert load_pseudo_label_file(torch_file, (2,))[2].tolist() == [1, 0, 1]


class Exploit:
    def __reduce__(self):
        return os.system, ("echo owned > owned.txt",)


def test_restricted_unpickler_rejects_arbitrary_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for payload in ({"pseudo_train_2": os.system}, {"pseudo_train_2": Exploit()}):
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(pickle.UnpicklingError, match="not allowed in a pseudo-label pickle"):
            load_pseudo_label_file(path, (2,))
    with open(path, "rb") as stream, pytest.raises(pickle.UnpicklingError):
        PseudoLabelUnpickler(stream).load()
    assert not (tmp_path / "owned.txt").exists()


# --------------------------------------------------------------------------- paper presets

# DESIGN §4 (A-InfoNCE released scripts), CIFAR-10 / CIFAR-100; lr is AdvCL's SGD lr and
# RoCL's base lr (the peak is 15× the base).
PAPER_TABLE = {
    "advcl": ({}, {}, 0.5, 0.5),
    "advcl-ip": ({"alpha": 0.2, "adv_weight": 1.2, "adaptive_epochs": 30, "d_min": 0.4},
                 {"alpha": 0.3, "adv_weight": 1.5, "adaptive_epochs": 20, "d_min": 0.5}, 1.0, 2.0),
    "advcl-hn": ({"beta": 1.0, "tau_plus": 0.12}, {"beta": 1.0, "tau_plus": 0.01}, 1.2, 2.0),
    "advcl-iphn": ({"alpha": 0.2, "adv_weight": 0.7, "adaptive_epochs": 30, "d_min": 0.4, "beta": 1.0, "tau_plus": 0.1},
                   {"alpha": 0.3, "adv_weight": 1.5, "adaptive_epochs": 20, "d_min": 0.5, "beta": 1.0,
                    "tau_plus": 0.01}, 2.0, 2.0),
    "rocl": ({}, {}, 0.1, 0.1),
    "rocl-ip": ({"alpha": 0.2, "adv_weight": 1.0}, {"alpha": 0.2, "adv_weight": 1.0}, 0.1, 0.1),
    "rocl-hn": ({"beta": 1.0, "tau_plus": 0.12}, {"beta": 1.0, "tau_plus": 0.1}, 0.2, 0.1),
    "rocl-iphn": ({"alpha": 0.2, "adv_weight": 1.0, "beta": 1.0, "tau_plus": 0.12},
                  {"alpha": 0.2, "adv_weight": 1.0, "beta": 1.0, "tau_plus": 0.1}, 0.3, 0.2),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_paper_presets_match_the_released_scripts(name, dataset):
    cls = registry.get(name)
    expected_params = PAPER_TABLE[name][0 if dataset == "cifar10" else 1]
    expected_lr = PAPER_TABLE[name][2 if dataset == "cifar10" else 3]
    params = cls.preset_params("paper", dataset)
    assert {key: params[key] for key in expected_params} == pytest.approx(expected_params)
    adversarial_knobs = {"alpha", "adv_weight", "adaptive_epochs", "d_min", "beta", "tau_plus"}
    assert set(params) & adversarial_knobs == set(expected_params), "a knob of another variant is set"
    method = cls(cls.make_params(params))  # the preset is a valid parameter set
    pretrain = cls.preset_pretrain("paper", dataset)
    assert pretrain["batch_size"] == 512
    if name.startswith("rocl"):
        assert pretrain["lr"] == pytest.approx(15 * expected_lr)
        assert pretrain["optimizer"] == "lars" and pretrain["epochs"] == 1000 and pretrain["weight_decay"] == 1e-6
        assert pretrain["warmup_start_lr"] * pretrain["lr"] == pytest.approx(2.4 * expected_lr)
        assert (method.params.attack_steps, method.params.attack_step_size) == (7, 0.007)
        assert method.params.regularizer_lambda == 256
    else:
        assert pretrain["lr"] == pytest.approx(expected_lr)
        assert pretrain["optimizer"] == "sgd" and pretrain["epochs"] == 400 and pretrain["weight_decay"] == 1e-4
        assert pretrain["warmup_start_lr"] * pretrain["lr"] == pytest.approx(0.01)
        assert pretrain["min_lr_fraction"] == 1e-3 and pretrain["warmup_epochs"] == 10
        assert method.params.ce_weight == 0.2 and method.params.pseudo_label_ks == (2, 10, 50, 100, 500)
