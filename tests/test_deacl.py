"""DeACL: the distillation loss, its step (modes, BN, gradient routing), the released step, the
padding-2 stem and in-model normalisation, the teacher hook, and the paper settings.

Expected numbers come from hand formulas in float64 (``dot``/``norm`` loops, analytic cosine
gradients), from quoted released settings, or from the released step's fixture
(tests/data/deacl_step.json, procedure inside; inputs from tests/deacl_inputs.py); the function
under test never produces an expected value.
"""

from __future__ import annotations

import json
import math

import deacl_inputs as inputs
import pytest
import torch
import torch.nn.functional as F
from tiny_run import TINY

import bench.methodkit.method
from bench.config import AttackConfig, ConfigError
from bench.engine.attacks import pgd
from bench.engine.models import ContrastiveModel, ResNet18, build_contrastive_model
from bench.methodkit import registry
from bench.methodkit.method import StepContext
from bench.methodkit.spec import TeacherSpec
from methods.deacl import DeACL, distillation_loss

DEACL_MEAN, DEACL_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)  # resnet_add_normalize.py


def context(step: int = 0, *, epsilon: float = 0.1, step_size: float = 0.025, steps: int = 2, seed: int = 0):
    return StepContext(
        0,
        step,
        1,
        torch.device("cpu"),
        torch.Generator().manual_seed(seed),
        AttackConfig(epsilon=epsilon, step_size=step_size, steps=steps),
    )


def make_deacl(**params) -> DeACL:
    return DeACL(DeACL.make_params(params))


def small_pair(student_init: str = "teacher") -> tuple[DeACL, ContrastiveModel, ContrastiveModel]:
    """DeACL with a randomly initialised small-CNN teacher (a real run gets the harness's or a file)."""
    method = make_deacl(student_init=student_init)
    torch.manual_seed(3)
    teacher = method.build_model("small_cnn")
    torch.manual_seed(4)
    student = method.build_model("small_cnn")
    method.set_teacher(teacher)
    return method, student, teacher


# --------------------------------------------------------------------------- the loss


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def cosine(a, b):
    return dot(a, b) / (math.sqrt(dot(a, a)) * math.sqrt(dot(b, b)))


def hand_loss(clean, adversarial, teacher, weight):
    """-1/B Σ cos(c_i, t_i) - k/B Σ cos(a_i, c_i), one row at a time."""
    rows = range(clean.shape[0])
    return -sum(cosine(clean[i], teacher[i]) for i in rows) / len(rows) - weight * sum(
        cosine(adversarial[i], clean[i]) for i in rows
    ) / len(rows)


def cosine_gradient(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∂cos(a, b)/∂a = b/(|a||b|) - cos(a, b)·a/|a|², row-wise."""
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    cos = (a * b).sum(1, keepdim=True) / (norm_a * norm_b)
    return b / (norm_a * norm_b) - cos * a / norm_a**2


@pytest.mark.parametrize("weight", [2.0, 0.0, 0.7])
def test_distillation_loss_values_and_gradients_match_the_formula(weight):
    generator = torch.Generator().manual_seed(0)
    clean, adversarial, teacher = (torch.randn(5, 7, generator=generator, dtype=torch.float64) for _ in range(3))
    adversarial = (clean + 0.5 * adversarial).requires_grad_(True)
    clean = clean.clone().requires_grad_(True)
    teacher = teacher.requires_grad_(True)
    loss, cos_teacher, cos_adversarial = distillation_loss(clean, adversarial, teacher, weight)
    c, a, t = clean.detach(), adversarial.detach(), teacher.detach()
    assert loss.item() == pytest.approx(float(hand_loss(c, a, t, weight)), rel=1e-12)
    assert cos_teacher.item() == pytest.approx(sum(cosine(c[i], t[i]) for i in range(5)) / 5)
    assert cos_adversarial.item() == pytest.approx(sum(cosine(a[i], c[i]) for i in range(5)) / 5)
    grad_clean, grad_adversarial = torch.autograd.grad(loss, (clean, adversarial))
    # the clean student output is pulled towards the teacher AND towards the adversarial output
    expected_clean = -(cosine_gradient(c, t) + weight * cosine_gradient(c, a)) / 5
    expected_adversarial = -weight * cosine_gradient(a, c) / 5
    torch.testing.assert_close(grad_clean, expected_clean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_adversarial, expected_adversarial, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- the step


class Recorder:
    """Wraps ``methods.deacl.pgd``: inputs, outputs, the student's mode per objective call."""

    def __init__(self, model, start=None):
        self.model, self.start, self.calls = model, start, []

    def __call__(self, loss_fn, x, **kwargs):
        modes, values = [], []

        def recorded(inputs_):
            modes.append(self.model.training)
            value = loss_fn(inputs_)
            values.append(value.detach())
            return value

        if self.start is not None:
            kwargs["start"] = x + self.start
        out = pgd(recorded, x, **kwargs)
        self.calls.append({"x": x.detach().clone(), "out": out, "modes": modes, "values": values, **kwargs})
        return out


def test_step_attacks_in_eval_mode_and_routes_no_gradient_to_the_teacher(digits, monkeypatch):
    method, student, teacher = small_pair()
    method.setup(student, digits.x_train[:16], context())
    teacher_state = {key: value.clone() for key, value in teacher.state_dict().items()}
    recorder = Recorder(student)
    monkeypatch.setattr(bench.methodkit.method, "pgd", recorder)
    images = digits.x_train[:16].float() / 255
    student.train()
    loss, logs = method.training_step(student, images, context())
    loss.backward()
    assert student.training and not teacher.training
    call = recorder.calls[0]
    assert call["modes"] == [False, False] and call["steps"] == 2
    assert all(parameter.grad is None for parameter in teacher.parameters())
    assert all(not parameter.requires_grad for parameter in teacher.parameters())
    assert all(torch.equal(value, teacher_state[key]) for key, value in teacher.state_dict().items())
    assert all(parameter.grad is not None for parameter in student.parameters())
    assert set(logs) == {"cos_teacher", "cos_adversarial"}


def test_attack_objective_is_the_negative_cosine_to_the_teacher(digits, monkeypatch):
    """With a zero start, the first objective value is -Σ cos(student_eval(x), teacher(x))."""
    method, student, teacher = small_pair(student_init="scratch")
    method.setup(student, digits.x_train[:8], context())
    images = digits.x_train[:8].float() / 255
    with torch.no_grad():  # before the step's train-mode forward moves the running statistics
        s, t = student.eval().features(images), teacher.features(images)
    expected = -sum(cosine(s[i].double(), t[i].double()) for i in range(8))
    method.augment = lambda batch, generator: batch  # the view is the images themselves
    recorder = Recorder(student, start=torch.zeros_like(images))
    monkeypatch.setattr(bench.methodkit.method, "pgd", recorder)
    method.training_step(student.train(), images, context())
    assert float(recorder.calls[0]["values"][0]) == pytest.approx(float(expected), rel=1e-5)


def test_student_starts_from_the_teacher_or_from_scratch(digits):
    method, student, teacher = small_pair()
    method.setup(student, digits.x_train[:8], context())
    teacher_state = teacher.encoder.state_dict()
    assert all(torch.equal(value, teacher_state[key]) for key, value in student.encoder.state_dict().items())
    method, student, teacher = small_pair(student_init="scratch")
    method.setup(student, digits.x_train[:8], context())
    assert not torch.equal(student.encoder.convs[0].weight, teacher.encoder.convs[0].weight)


def test_student_from_a_teacher_with_another_stem_is_refused():
    method = make_deacl()
    torch.manual_seed(0)
    method.set_teacher(build_contrastive_model("resnet18", ("normal",), "simclr"))
    student = method.build_model("resnet18_deacl")
    with pytest.raises(ConfigError, match=r"stem padding 1.*stem padding 2.*student_init=scratch"):
        method.setup(student, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), context())


def test_a_real_run_without_a_teacher_is_a_one_line_error():
    method = make_deacl()
    assert method.needs_teacher()
    student = method.build_model("small_cnn")
    with pytest.raises(ConfigError) as error:
        method.setup(student, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), context())
    message = str(error.value)
    assert "\n" not in message and "--param teacher=" in message and "simclr" in message


def test_teacher_from_a_bench_file(tmp_path, digits):
    torch.manual_seed(2)
    teacher = build_contrastive_model("small_cnn", ("normal",), "simclr")
    path = tmp_path / "encoder.pt"
    torch.save(
        {
            "format": "acl-bench",
            "model": teacher.state_dict(),
            "arch": "small_cnn",
            "bn_branches": ["normal"],
            "projector": "simclr",
            "normalization": "none",
            "method": "simclr",
            "run_id": "simclr-x",
        },
        path,
    )
    method = make_deacl(teacher=str(path))
    assert not method.needs_teacher()
    student = method.build_model("small_cnn")
    method.setup(student, digits.x_train[:8], context())
    assert torch.equal(student.encoder.convs[1].weight, teacher.encoder.convs[1].weight)
    assert method.teacher_source == "simclr-x"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"teacher_format": "simclr"}, "teacher_format='simclr' is invalid: allowed"),
        ({"student_init": "random"}, r"student_init='random' is invalid: allowed \['teacher', 'scratch'\]"),
        ({"distill_weight": -1.0}, "distill_weight=-1.0 is invalid"),
        ({"distill_weight": float("nan")}, "distill_weight=nan is invalid"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        DeACL.make_params(params)


def test_no_variants_and_the_declared_model():
    names = registry.available()
    assert "deacl" in names and not any(name.startswith("deacl-") for name in names)
    assert DeACL.model.projector == "none" and DeACL.model.normalization == "cifar10"
    assert DeACL.model.branches == ("normal",) and DeACL.teacher == TeacherSpec("simclr")


# --------------------------------------------------------------------------- the released step


FIXTURE = json.loads(inputs.FIXTURE.read_text())


def test_released_step_fixture_inputs_are_regenerated_identically():
    assert FIXTURE["pattern_version"] == inputs.PATTERN_VERSION
    settings = FIXTURE["settings"]
    assert (settings["batch"], settings["image_size"], settings["pgd_steps"]) == (
        inputs.BATCH,
        inputs.IMAGE_SIZE,
        inputs.PGD_STEPS,
    )
    view, start = inputs.view("deacl/view"), inputs.start_noise("deacl/start")
    assert not inputs.differences(FIXTURE["inputs"]["view"], inputs.checksums("view", view), 1e-12, 0)
    assert not inputs.differences(FIXTURE["inputs"]["start"], inputs.checksums("start", start), 1e-12, 0)


def our_released_step(monkeypatch):
    """Our step on the fixture's weights, view and start noise (float64)."""
    method = make_deacl(student_init="scratch", distill_weight=inputs.DISTILL_WEIGHT)
    student, teacher = (method.build_model("resnet18_deacl").double() for _ in range(2))
    inputs.fill_weights(student, "student/")
    inputs.fill_weights(teacher, "teacher/")
    method.set_teacher(teacher)
    ctx = context(epsilon=inputs.EPSILON, step_size=inputs.STEP_SIZE, steps=inputs.PGD_STEPS)
    method.setup(student, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ctx)
    method.augment = lambda batch, generator: batch
    recorder = Recorder(student, start=inputs.start_noise("deacl/start"))
    monkeypatch.setattr(bench.methodkit.method, "pgd", recorder)
    x = inputs.view("deacl/view")
    student.train()
    loss, _ = method.training_step(student, x, ctx)
    loss.backward()
    with torch.no_grad():
        target = teacher.features(x)
    return student, loss, target, recorder.calls[0]["out"], x


@pytest.mark.e2e
def test_our_step_reproduces_the_released_step(monkeypatch):
    student, loss, target, adversarial, x = our_released_step(monkeypatch)
    assert loss.item() == pytest.approx(FIXTURE["loss"], rel=1e-5)
    failures = {}
    for name, tensor in (("target", target), ("x_adv", adversarial), ("x_adv-x", adversarial - x)):
        expected = FIXTURE["target"] if name == "target" else FIXTURE["adversarial"][name]
        failures[name] = inputs.differences(expected, inputs.checksums(name, tensor), 1e-5, 1e-9)
    gradients = dict(student.named_parameters())
    assert set(FIXTURE["gradients"]) == set(gradients)
    for key, expected in FIXTURE["gradients"].items():
        failures[key] = inputs.differences(expected, inputs.checksums(key, gradients[key].grad), 1e-5, 1e-9)
    buffers = dict(student.named_buffers())
    for key, expected in FIXTURE["buffers_after_step"].items():  # one train-mode forward of [x; x̃]
        failures[key] = inputs.differences(expected, inputs.checksums(key, buffers[key]), 1e-5, 1e-9)
    assert not {key: value for key, value in failures.items() if value}


# --------------------------------------------------------------------------- stem and normalisation


def test_padding_two_stem_sizes_and_function():
    torch.manual_seed(0)
    deacl = build_contrastive_model("resnet18_deacl", ("normal",), "none", normalization="cifar10").eval()
    ours = build_contrastive_model("resnet18", ("normal",), "none", normalization="cifar10").eval()
    ours.load_state_dict(deacl.state_dict())  # same keys and shapes: the state dict cannot tell them apart
    sizes = {}
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        getattr(deacl.encoder, name).register_forward_hook(lambda m, i, o, name=name: sizes.update({name: o.shape}))
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = deacl.features(image)
        assert features.shape == (2, 512)
        assert not torch.allclose(features, ours.features(image), atol=1e-3)  # a different function
    assert [tuple(sizes[name][-2:]) for name in sizes] == [(34, 34), (34, 34), (17, 17), (9, 9), (5, 5)]
    assert deacl.encoder.conv1.padding == (2, 2) and isinstance(deacl.encoder, ResNet18)


def test_in_model_normalisation_is_deacls_cifar10_statistics():
    torch.manual_seed(0)
    model = build_contrastive_model("resnet18_deacl", ("normal",), "none", normalization="cifar10").eval()
    assert model.normalize.mean.flatten().tolist() == pytest.approx(DEACL_MEAN)
    assert model.normalize.std.flatten().tolist() == pytest.approx(DEACL_STD)
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    model = model.double()
    # float32 buffers, as the released NormalizeByChannelMeanStd registers them
    mean = torch.tensor(DEACL_MEAN, dtype=torch.float32).double().view(1, 3, 1, 1)
    std = torch.tensor(DEACL_STD, dtype=torch.float32).double().view(1, 3, 1, 1)
    stem = F.conv2d((image - mean) / std, model.encoder.conv1.weight, padding=2)  # 8 + 2·2 - 2 = 10
    captured = []
    model.encoder.conv1.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model.features(image)
    assert captured[0].shape[-1] == 10
    torch.testing.assert_close(captured[0], stem, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- published settings


def released_lr(epoch: int) -> float:
    """pl_bolts LinearWarmupCosineAnnealingLR(warmup 10, max 100, start 0.003, eta_min 0), per epoch, base 0.5."""
    if epoch < 10:
        return 0.003 + epoch * (0.5 - 0.003) / 9
    return 0.5 * 0.5 * (1 + math.cos(math.pi * (epoch - 10) / 90))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_paper_settings_quote_the_released_scripts(dataset):
    # DeACL_cifar10_resnet18.sh / DeACL_cifar100_resnet18.sh: --max_epochs 100 --optimizer sgd --lr 0.5
    # --weight_decay 5e-4 --batch_size 256 --trades_k 2; solo/args/utils.py: momentum 0.9
    pretrain = DeACL.published("paper", dataset).pretrain
    assert (pretrain["optimizer"], pretrain["lr"], pretrain["weight_decay"]) == ("sgd", 0.5, 5e-4)
    assert (pretrain["batch_size"], pretrain["epochs"], pretrain["momentum"]) == (256, 100, 0.9)
    params = DeACL.make_params(DeACL.published("paper", dataset).params)
    assert params.distill_weight == 2.0 and params.student_init == "teacher"
    # our per-iteration warm-up meets the released per-epoch value at the start of each warm-up epoch
    start, warmup = pretrain["warmup_start_lr"] * pretrain["lr"], pretrain["warmup_epochs"]
    for epoch in range(10):
        ours = start + (pretrain["lr"] - start) * min(epoch, warmup) / warmup
        assert ours == pytest.approx(released_lr(epoch), rel=1e-12)
    assert pretrain["min_lr_fraction"] == 0.0


def test_paper_settings_refuse_a_dataset_without_a_released_script():
    with pytest.raises(ConfigError, match=r"dataset='stl10'.*allowed \['cifar10', 'cifar100'\]"):
        DeACL.published("paper", "stl10")
    smoke = DeACL.published("smoke", "digits")
    assert dict(smoke.params) == {} and dict(smoke.pretrain) == {}


@pytest.mark.e2e
def test_bench_run_trains_the_simclr_teacher_first_and_distils_from_it(tmp_path):
    import json

    from bench.cli.app import main
    from bench.store.results import ResultsStore

    code = main(
        [
            "run",
            "--methods",
            "deacl",
            "--results-dir",
            str(tmp_path / "r"),
            "--reports-dir",
            str(tmp_path / "p"),
            *TINY,
            "--jobs",
            "2",
            "--no-report",
        ]
    )
    assert code == 0
    store = ResultsStore(tmp_path / "r")
    runs = {run.run_id.split("-")[0]: run for run in store.run_dirs()}
    assert set(runs) == {"simclr", "deacl"} and all(run.is_complete() for run in runs.values())
    recorded = json.loads(runs["deacl"].config.read_text())
    teacher_key = json.loads(runs["simclr"].config.read_text())["pretrain_key"]
    assert recorded["teacher"] == {"method": "simclr", "pretrain_key": teacher_key}
    assert {row.method for row in store.read_rows()} == {"simclr", "deacl"}
