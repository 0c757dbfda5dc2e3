"""Every registered method trains on the digits; RoCL/AdvCL specifics; the published settings.

Smoke: 10 steps on one fixed batch of 32 with the view/attack generator re-seeded every step, so
the objective is the same function of the weights at each step (up to the attack adapting
to the model); its loss must be finite and fall, and every adversarial view must lie within
ε of its clean source and in [0, 1] (``pgd`` is wrapped in each method's module).
"""

from __future__ import annotations

import os
import pickle
import re
import sys

import numpy as np
import pytest
import torch

import bench.methodkit.method
import bench.methodkit.method as method_module
import bench.methodkit.pseudo_labels as pseudo_label_module
import methods.advcl as advcl_module
import methods.rocl as rocl_module
from bench.config import AttackConfig, ConfigError
from bench.engine.attacks import pgd
from bench.engine.data import load_digits, to_float
from bench.engine.views import high_frequency_component
from bench.methodkit import registry
from bench.methodkit.method import Method, Published, StepContext
from bench.methodkit.pseudo_labels import PseudoLabelUnpickler, load_pseudo_label_file
from bench.methodkit.spec import PublishedSettings, VariantSpec
from bench.methodkit.variants import make_variant
from bench.store.results import RunDir
from methods.advcl import AdvCL

# 10 steps of 32 images: every method's loss falls by at least 2.7 % (DeACL; the others 6.8 % or more), a
# quarter of the work of 20 steps of 64 (the test was a sixth of the suite's time)
EPSILON, STEP_SIZE, PGD_STEPS, BATCH, SMOKE_STEPS = 0.1, 0.025, 2, 32, 10
# A listed ``++`` form (dynacl++...) pretrains with its method's class and smoke row: its steps are its method's
METHOD_NAMES = [name for name in registry.available() if not registry.spelling(name).post]


def make_context(
    step: int = 0, *, seed: int = 0, indices=None, run_dir=None, epoch: int = 0, epochs: int = 1
) -> StepContext:
    return StepContext(
        epoch=epoch,
        step=step,
        steps_per_epoch=1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        attack=AttackConfig(epsilon=EPSILON, step_size=STEP_SIZE, steps=PGD_STEPS),
        indices=indices,
        run_dir=run_dir,
        epochs=epochs,
    )


def build(name: str, **overrides):
    """A method with its smoke-preset parameters (plus ``overrides``) and its small CNN.

    A distillation method (a ``teacher`` spec) gets a randomly initialised small-CNN teacher of
    its ``teacher.method``, built here: a real run's teacher comes from the harness or a file.
    """
    cls = registry.get(name)
    method = cls(cls.make_params({**cls.published("smoke", "digits").params, **overrides}))
    if cls.teacher is not None and method.needs_teacher():
        torch.manual_seed(1)
        teacher_class = registry.get(cls.teacher.method)
        method.set_teacher(teacher_class().build_model("small_cnn"))
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
    """Record every pretraining attack: a method calls ``pgd`` itself or through
    ``bench.methodkit.method.pretraining_pgd``; both are bench.engine.attacks.pgd, so one recorder stands for both."""
    module = sys.modules[type(method).__module__]
    recorder = PGDRecorder(model, bench.methodkit.method.pgd)
    monkeypatch.setattr(bench.methodkit.method, "pgd", recorder)
    if getattr(module, "pgd", None) is not None:
        monkeypatch.setattr(module, "pgd", recorder)
    return recorder


@pytest.fixture(scope="module")
def batch(digits):
    indices = torch.arange(BATCH)
    return digits.x_train[:BATCH], indices


@pytest.fixture(scope="module")
def batch_at_8_px():
    """The same images at the digits' own 8 px: 26 methods × 10 steps cost a third less than at 16 px."""
    return load_digits(8).x_train[:BATCH], torch.arange(BATCH)


@pytest.mark.e2e
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_smoke_steps_lower_the_loss_and_keep_adversaries_in_the_ball(name, batch_at_8_px, monkeypatch):
    images_uint8, indices = batch_at_8_px
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
    if type(method).variant.adversarial_views:
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


@pytest.mark.e2e
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

    released = pgd(
        recomputed,
        org,
        epsilon=EPSILON,
        step_size=STEP_SIZE,
        steps=PGD_STEPS,
        generator=torch.Generator().manual_seed(9),
    )
    assert torch.allclose(ours, released, atol=1e-6)


def test_advcl_hfc_radius_scales_with_image_size():
    method = AdvCL()
    assert method.hfc_radius(torch.zeros(1, 3, 32, 32)) == 8
    assert method.hfc_radius(torch.zeros(1, 3, 16, 16)) == 4
    assert method.hfc_radius(torch.zeros(1, 3, 2, 2)) == 1


# --------------------------------------------------------------------------- pseudo-labels


@pytest.mark.e2e
def test_advcl_pixel_pseudo_labels_have_the_right_shapes_and_are_cached(digits, tmp_path, monkeypatch):
    images = digits.x_train[:300]
    ks = (2, 10, 50, 500)
    method, model = build("advcl", pseudo_label_ks=ks)
    assert {name: head.out_features for name, head in model.heads.items()} == {f"pseudo_{k}": k for k in ks}
    method.setup(model, images, make_context(run_dir=RunDir(tmp_path)))
    labels = method.pseudo_labels
    for k in ks:
        assert labels[k].shape == (300,) and labels[k].dtype == torch.long
        assert labels[k].min() >= 0 and labels[k].max() < min(k, 300)
    assert len(torch.unique(labels[10])) == 10  # the k-means clusters are all used
    cache = RunDir(tmp_path).pseudo_labels
    with np.load(cache, allow_pickle=False) as archive:
        assert {f"pseudo_train_{k}" for k in ks} <= set(archive.files)
    # A resumed run reuses the cache instead of clustering again.
    monkeypatch.setattr(pseudo_label_module, "cluster_pseudo_labels", lambda *a, **k: pytest.fail("cache not reused"))
    again, model_again = build("advcl", pseudo_label_ks=ks)
    again.setup(model_again, images, make_context(run_dir=RunDir(tmp_path)))
    assert all(torch.equal(again.pseudo_labels[k], labels[k]) for k in ks)


def test_advcl_clusters_the_features_of_a_named_encoder(digits, tmp_path):
    images = digits.x_train[:120]
    trained, trained_model = build("advcl")
    path = tmp_path / "encoder.pt"
    torch.save(
        {
            "format": "acl-bench",
            "model": trained_model.state_dict(),
            "arch": "small_cnn",
            "bn_branches": list(trained.model.branches),
            "projector": trained.model.projector,
            "normalization": trained.model.normalization,
            "finetune_bn": trained.model.finetune_bn,
        },
        path,
    )
    method, model = build("advcl", pseudo_label_ks=(2, 10), pseudo_label_encoder=str(path))
    method.setup(model, images, make_context(run_dir=RunDir(tmp_path)))
    assert method.pseudo_labels[10].shape == (120,) and method.pseudo_labels[10].max() < 10
    with np.load(RunDir(tmp_path).pseudo_labels, allow_pickle=False) as archive:
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
        numpy_file.write_bytes(
            pickle.dumps(
                {"pseudo_train_2": np.array([0, 1, 1], dtype=np.int32), "pseudo_test_2": np.array([1], dtype=np.int32)},
                protocol=protocol,
            )
        )
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


# --------------------------------------------------------------------------- published settings

# Quoted from the released scripts, independently of the tables in methods/*.py.
# ACL and the SimCLR anchor: VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py (--optimizer lars
# with optimizer/lars.py, --lr 5.0, weight_decay=1e-6, cosine_annealing to 1e-6 / args.lr after
# warmup_steps=10 * len(train_loader) from 0, --batch_size 512, --epochs 1000), for every dataset.
ACL_PRETRAIN = {
    "optimizer": "lars-acl",
    "lr": 5.0,
    "weight_decay": 1e-6,
    "warmup_epochs": 10,
    "warmup_start_lr": 0.0,
    "min_lr_fraction": 2e-7,
    "epochs": 1000,
    "batch_size": 512,
}
# yqy2001/A-InfoNCE Asym-AdvCL/pretraining_advCL.py: SGD momentum 0.9, weight_decay 1e-4, batch_size 512,
# warm-up from 0.01 over 10 epochs (batch > 256), cosine to lr·0.1³; every script passes --epoch 400.
ADVCL_PARAMS = {"ce_weight": 0.2, "hfc_radius": 8}  # --ce_weight 0.2, --radius 8


def advcl_pretrain(lr: float) -> dict:
    return {
        "optimizer": "sgd",
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 512,
        "warmup_epochs": 10,
        "warmup_start_lr": 0.01 / lr,
        "min_lr_fraction": 1e-3,
        "epochs": 400,
        "shards": 2,
    }  # nn.DataParallel over 2 GPUs (README: "2 Tesla V100"): per-GPU BN over 256


# yqy2001/A-InfoNCE Asym-RoCL/rocl_train.py + argument.py: torchlars LARS (trust_coef 0.001) over SGD momentum
# 0.9, --decay 1e-6, 2 GPUs × --batch-size=256, --epoch 1000, --k=7, --alpha 0.007, --lamda 256, warm-up ×15
# over 10 epochs stepped per epoch (base·2.4 at epoch 0 .. 15·base at epoch 9), then cosine to 0.
ROCL_PARAMS = {"attack_steps": 7, "attack_step_size": 0.007, "regularizer_lambda": 256.0}


def rocl_pretrain(base_lr: float) -> dict:
    return {
        "optimizer": "lars",
        "lars_trust": 1e-3,
        "lr": 15 * base_lr,
        "momentum": 0.9,
        "weight_decay": 1e-6,
        "warmup_epochs": 9,
        "warmup_start_lr": 0.16,
        "min_lr_fraction": 0.0,
        "epochs": 1000,
        "batch_size": 512,
        "shards": 2,
    }  # shell/rocl-*.sh: --nproc_per_node=2 --batch-size=256


# docs/design.md §4 (A-InfoNCE released scripts), CIFAR-10 / CIFAR-100: the A-InfoNCE knobs each script sets, then
# AdvCL's SGD lr or RoCL's base lr (the peak is 15× the base).
PAPER_TABLE = {
    "simclr": ({}, {}, 5.0, 5.0),
    "acl": ({}, {}, 5.0, 5.0),
    "acl-ip": ({}, {}, 5.0, 5.0),  # suite extension: ACL's schedule, knobs at their defaults
    "acl-hn": ({}, {}, 5.0, 5.0),
    "acl-iphn": ({}, {}, 5.0, 5.0),
    "advcl": ({}, {}, 0.5, 0.5),
    "advcl-ip": (
        {"alpha": 0.2, "adv_weight": 1.2, "adaptive_epochs": 30, "d_min": 0.4},
        {"alpha": 0.3, "adv_weight": 1.5, "adaptive_epochs": 20, "d_min": 0.5},
        1.0,
        2.0,
    ),
    "advcl-hn": ({"beta": 1.0, "tau_plus": 0.12}, {"beta": 1.0, "tau_plus": 0.01}, 1.2, 2.0),
    "advcl-iphn": (
        {"alpha": 0.2, "adv_weight": 0.7, "adaptive_epochs": 30, "d_min": 0.4, "beta": 1.0, "tau_plus": 0.1},
        {"alpha": 0.3, "adv_weight": 1.5, "adaptive_epochs": 20, "d_min": 0.5, "beta": 1.0, "tau_plus": 0.01},
        2.0,
        2.0,
    ),
    "rocl": ({}, {}, 0.1, 0.1),
    "rocl-ip": ({"alpha": 0.2, "adv_weight": 1.0}, {"alpha": 0.2, "adv_weight": 1.0}, 0.1, 0.1),
    "rocl-hn": ({"beta": 1.0, "tau_plus": 0.12}, {"beta": 1.0, "tau_plus": 0.1}, 0.2, 0.1),
    "rocl-iphn": (
        {"alpha": 0.2, "adv_weight": 1.0, "beta": 1.0, "tau_plus": 0.12},
        {"alpha": 0.2, "adv_weight": 1.0, "beta": 1.0, "tau_plus": 0.1},
        0.3,
        0.2,
    ),
}
# The smoke preset (embedded digits) sets no optimiser override; it switches on each variant's knobs
# (AdvCL-IP: adaptive α after 2 epochs, so the schedule runs in a short smoke run).
SMOKE_TABLE = {
    "simclr": {},
    "acl": {},
    "acl-ip": {},
    "acl-hn": {},
    "acl-iphn": {},
    "rocl": {},
    "advcl": {},
    "rocl-ip": {"alpha": 0.2, "adv_weight": 1.0},
    "rocl-hn": {"beta": 1.0, "tau_plus": 0.1},
    "rocl-iphn": {"alpha": 0.2, "adv_weight": 1.0, "beta": 1.0, "tau_plus": 0.1},
    "advcl-ip": {"alpha": 0.2, "adv_weight": 1.0, "adaptive_epochs": 2, "d_min": 0.4},
    "advcl-hn": {"beta": 1.0, "tau_plus": 0.1},
    "advcl-iphn": {"alpha": 0.2, "adv_weight": 1.0, "adaptive_epochs": 2, "d_min": 0.4, "beta": 1.0, "tau_plus": 0.1},
}


def expected_paper(name: str, dataset: str) -> tuple[dict, dict]:
    """(pretraining overrides, params) of ``name``'s paper row for ``dataset``, from the tables above."""
    knobs, lr = PAPER_TABLE[name][0 if dataset == "cifar10" else 1], PAPER_TABLE[name][2 if dataset == "cifar10" else 3]
    if name.startswith("advcl"):
        return advcl_pretrain(lr), {**ADVCL_PARAMS, **knobs}
    if name.startswith("rocl"):
        return rocl_pretrain(lr), {**ROCL_PARAMS, **knobs}
    return ACL_PRETRAIN, knobs


# Methods outside the A-InfoNCE family check their published settings in a test file of their own.
DYNACL_NAMES = (
    "dynacl",
    "dynacl-ip",
    "dynacl-hn",
    "dynacl-iphn",
    "dynacl++",
    "dynacl++-ip",
    "dynacl++-hn",
    "dynacl++-iphn",
)
AIR_NAMES = (
    "acl-air",
    "acl-air-ip",
    "acl-air-hn",
    "acl-air-iphn",
    "dynacl-air",
    "dynacl-air-ip",
    "dynacl-air-hn",
    "dynacl-air-iphn",
    "dynacl-air++",
    "dynacl-air++-ip",
    "dynacl-air++-hn",
    "dynacl-air++-iphn",
)
TESTED_ELSEWHERE = {
    "deacl": "tests/test_deacl.py",
    **{name: "tests/test_dynacl.py" for name in DYNACL_NAMES},
    **{name: "tests/test_air.py" for name in AIR_NAMES},
}


def test_every_builtin_method_has_expected_settings():
    # every listed name: the methods and the post forms they publish (dynacl++); a `<method>++` is never listed
    builtin = {name for name, cls in registry.available().items() if cls.__module__.startswith("methods.")}
    assert builtin - set(TESTED_ELSEWHERE) == set(PAPER_TABLE) == set(SMOKE_TABLE)


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_paper_settings_match_the_released_scripts(name, dataset):
    cls = registry.get(name)
    pretrain, params = expected_paper(name, dataset)
    published = cls.published("paper", dataset)
    assert dict(published.pretrain) == pytest.approx(pretrain)
    assert dict(published.params) == pytest.approx(params)
    released = "yqy2001/A-InfoNCE" if name.startswith(("advcl", "rocl")) else "Adversarial-Contrastive-Learning"
    assert released in published.source
    resolved = cls.make_params(published.params)  # the row is a valid parameter set, resolved to exactly these values
    assert resolved == cls.Params(**params)
    lr = PAPER_TABLE[name][2 if dataset == "cifar10" else 3]
    if name.startswith("rocl"):  # in the released scheduler's terms: peak 15·base, first warm-up epoch 2.4·base
        assert published.pretrain["lr"] == pytest.approx(15 * lr)
        assert published.pretrain["warmup_start_lr"] * published.pretrain["lr"] == pytest.approx(2.4 * lr)
    elif name.startswith("advcl"):  # warm-up from 0.01 whatever the lr
        assert published.pretrain["warmup_start_lr"] * published.pretrain["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("name", sorted(SMOKE_TABLE))
def test_smoke_settings_switch_on_each_variants_knobs(name):
    cls = registry.get(name)
    published = cls.published("smoke", "digits")
    assert dict(published.pretrain) == {}
    assert dict(published.params) == pytest.approx(SMOKE_TABLE[name])
    assert cls.published("smoke", "cifar10") == published  # one smoke row whatever the dataset
    cls.make_params(published.params)


def test_paper_settings_of_an_unlisted_dataset():
    """A per-dataset row fails with the datasets it has; a '*' row (ACL's script) serves any dataset."""
    with pytest.raises(
        ConfigError,
        match=r"dataset='stl10' is invalid for the paper settings of 'advcl-ip': "
        r"allowed \['cifar10', 'cifar100'\]",
    ):
        registry.get("advcl-ip").published("paper", "stl10")
    with pytest.raises(ConfigError, match=r"dataset='digits' is invalid for the paper settings of 'rocl'"):
        registry.get("rocl").published("paper", "digits")
    assert dict(registry.get("acl-hn").published("paper", "stl10").pretrain) == pytest.approx(ACL_PRETRAIN)
    with pytest.raises(ConfigError, match=r"preset='huge' is invalid: allowed \['smoke', 'paper'\]"):
        registry.get("acl").published("huge", "cifar10")


def test_variants_without_a_row_use_their_base_row_and_methods_without_tables_none():
    row = Published(source="a plugin's script", pretrain={"lr": 0.3}, params={"alpha": 0.4})

    class PluginBase(Method):
        name = "plugin-base"
        variant = VariantSpec(adversarial_views=True)
        published_settings = PublishedSettings(
            paper={"plugin-base": {"cifar10": row}},
            smoke={"plugin-base": Published(source="smoke", params={"beta": 2.0})},
        )

    variant = make_variant(PluginBase, "ip")
    variant.name = "plugin-base-ip"
    assert variant.published("paper", "cifar10") == row
    assert dict(variant.published("smoke", "digits").params) == {"beta": 2.0}
    with pytest.raises(ConfigError, match=r"'plugin-base-ip': allowed \['cifar10'\]"):
        variant.published("paper", "cifar100")

    class Bare(Method):
        name = "bare"

    assert Bare.published("paper", "anything") == Published() == Bare.published("smoke", "digits")


def test_published_rows_are_copies_of_shared_dicts():
    shared = {"lr": 1.0}
    first, second = Published(pretrain=shared), Published(pretrain=shared)
    first.pretrain["lr"] = 2.0
    assert second.pretrain["lr"] == 1.0 and shared["lr"] == 1.0


# --------------------------------------------------------------------------- parameters


def test_make_params_coerces_cli_strings_by_type():
    rocl = registry.get("rocl").make_params({"attack_steps": "none", "attack_step_size": "8/255", "temperature": "0.2"})
    assert (rocl.attack_steps, rocl.attack_step_size, rocl.temperature) == (None, pytest.approx(8 / 255), 0.2)
    assert registry.get("rocl").make_params({"attack_steps": "5"}).attack_steps == 5
    advcl = registry.get("advcl").make_params({"pseudo_label_ks": "2,10", "hfc_radius": "4", "quirks": "official"})
    assert (advcl.pseudo_label_ks, advcl.hfc_radius, advcl.quirks) == ((2, 10), 4, "official")


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("acl-ip", {"alpha": "nan"}, "acl-ip.alpha='nan' is invalid: allowed finite numbers"),
        ("acl-ip", {"adaptive_epochs": "2.5"}, "acl-ip.adaptive_epochs='2.5' is invalid: allowed int values"),
        ("rocl", {"nope": 1}, r"method parameter 'nope' of 'rocl' is unknown: allowed \[.*'regularizer_lambda'"),
        ("rocl", {"attack_steps": "-1"}, "attack_steps=-1 is invalid: allowed numbers >= 0 or none"),
        ("rocl", {"attack_step_size": "-0.1"}, "attack_step_size=-0.1 is invalid"),
        ("rocl", {"regularizer_lambda": "0"}, "regularizer_lambda=0.0 is invalid: allowed numbers > 0"),
        ("advcl", {"pseudo_label_ks": "2,2"}, r"pseudo_label_ks=\(2, 2\) is invalid: allowed distinct integers >= 1"),
        ("advcl", {"pseudo_label_ks": ""}, r"pseudo_label_ks=\(\) is invalid"),
        ("advcl", {"pseudo_label_ks": "2,x"}, "advcl.pseudo_label_ks='x' is invalid: allowed int values"),
        ("advcl", {"ce_weight": "-1"}, "ce_weight=-1.0 is invalid: allowed numbers >= 0"),
        ("advcl", {"hfc_radius": "-1"}, "hfc_radius=-1 is invalid"),
        ("simclr", {"temperature": "0"}, "temperature=0.0 is invalid: allowed numbers > 0"),
        ("simclr", {"temperature": "inf"}, "simclr.temperature='inf' is invalid: allowed finite numbers"),
        ("acl-hn", {"tau_plus": "1"}, r"tau_plus=1.0 is invalid: allowed numbers in \[0, 1\)"),
        ("acl-hn", {"beta": "-1"}, "beta=-1.0 is invalid: allowed numbers >= 0"),
        ("rocl-ip", {"quirks": "bogus"}, r"quirks='bogus' is invalid for 'rocl-ip': allowed \['none', 'official'\]"),
        ("acl-ip", {"quirks": "official"}, r"quirks='official' is invalid for 'acl-ip': allowed \['none'\]"),
    ],
)
def test_make_params_rejects_bad_values_in_one_line(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        registry.get(name).make_params(overrides)


def test_temperature_is_a_parameter_every_loss_reads(monkeypatch):
    """``--param temperature=…`` reaches the contrastive loss (it was an instance attribute before)."""
    seen = []
    monkeypatch.setattr(method_module, "a_infonce", lambda *args, **kwargs: seen.append(kwargs) or torch.zeros(()))
    method = registry.get("acl-ip")(registry.get("acl-ip").make_params({"temperature": "0.25"}))
    method.contrastive_loss(torch.zeros(2, 4, 3), (False, False, True, True))
    assert seen[0]["temperature"] == 0.25 and seen[0]["alpha"] == 0.2


# --------------------------------------------------------------------------- official quirks: dispatch by name


class LossSpy:
    """Records the keyword arguments of each call, then computes the real loss."""

    def __init__(self, original):
        self.original, self.calls = original, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.original(*args, **kwargs)


@pytest.mark.parametrize("quirks", ["none", "official"])
def test_advcl_calls_the_released_loss_by_name_in_official_mode(quirks, batch, monkeypatch):
    images_uint8, indices = batch
    method, model = build("advcl-iphn", quirks=quirks, adv_weight=1.3, temperature=0.4, pseudo_label_ks=(2, 10))
    method.setup(model, images_uint8, make_context())
    official = LossSpy(advcl_module.official_advcl_loss)
    formula = LossSpy(advcl_module.a_infonce)
    monkeypatch.setattr(advcl_module, "official_advcl_loss", official)
    monkeypatch.setattr(advcl_module, "a_infonce", formula)
    method.training_step(model, to_float(images_uint8), make_context(indices=indices))
    used, unused = (official, formula) if quirks == "official" else (formula, official)
    assert not unused.calls and len(used.calls) == PGD_STEPS + 1
    attack, train = used.calls[0], used.calls[-1]
    scale = pytest.approx(0.4 / 0.07)
    # The attack maximises the plain loss with w (released ori_SupConLoss: w² on the clean-anchor block).
    assert attack == {"temperature": 0.4, "scale": scale, "alpha": None, "adv_weight": 1.3, "hard_negatives": None}
    assert train == {"temperature": 0.4, "scale": scale, "alpha": 0.2, "adv_weight": 1.3, "hard_negatives": (1.0, 0.1)}


@pytest.mark.parametrize("quirks", ["none", "official"])
def test_rocl_calls_the_released_loss_by_name_in_official_mode(quirks, batch, monkeypatch):
    images_uint8, indices = batch
    method, model = build("rocl-iphn", quirks=quirks, adv_weight=1.4)
    official = LossSpy(rocl_module.official_rocl_loss)
    monkeypatch.setattr(rocl_module, "official_rocl_loss", official)
    formula = LossSpy(method_module.a_infonce)
    monkeypatch.setattr(method_module, "a_infonce", formula)
    method.training_step(model, to_float(images_uint8), make_context(indices=indices))
    asymmetry = {"alpha": 0.2, "hard_negatives": (1.0, 0.1)}
    if quirks == "official":  # the released sum: w unchanged, no ×2
        assert official.calls == [{"temperature": 0.5, "adv_weight": 1.4, **asymmetry}] and not formula.calls
    else:  # the formulas: w/2 per direction, ×2 to the released per-pair sum
        assert not official.calls
        assert formula.calls == [
            {"temperature": 0.5, "detach_contrast": True, "scale": 2.0, "adv_weight": 0.7, **asymmetry}
        ]


@pytest.mark.parametrize(
    "name, allowed",
    [("rocl-ip", ["none", "official"]), ("advcl", ["none", "official"]), ("acl-ip", ["none"]), ("simclr", ["none"])],
)
def test_quirks_official_only_where_a_released_reproduction_exists(name, allowed):
    """Only RoCL and AdvCL (and their variants) reproduce released code; elsewhere 'official' would be ignored."""
    cls = registry.get(name)
    for quirks in allowed:
        assert cls.make_params({"quirks": quirks}).quirks == quirks
    bad = "official" if allowed == ["none"] else "bogus"
    with pytest.raises(ConfigError, match=re.escape(f"quirks={bad!r} is invalid for {name!r}: allowed {allowed}")):
        cls.make_params({"quirks": bad})
