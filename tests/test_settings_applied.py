"""What a run applies, read at run time, equals the released scripts (issue 24 §1; fidelity audit 2).

The dry-run tests (tests/test_protocols.py) check what a plan prints; these check what one scheme's
finetuning and evaluation (``finetune_and_evaluate_scheme``, the path of ``bench run`` and ``bench finetune``)
actually do, through spies: the optimiser's learning rate, momentum and weight decay at every epoch, the
batch size the loop draws, whether each batch was augmented, the head it starts from, the training attack's
settings, the TRADES start, branch and β the loss used, the per-epoch evaluation, and the evaluation PGD's
ε, step and steps. A protocol value that is printed but not applied (a milestone shifted inside
``finetune``, ``scheme_evaluation`` returning the run's step, the augment flag ignored) fails here.

Cost: a small CNN on two 8-px images, one batch per epoch, every attack replaced by a recording stub, so
even RoCL's 150 epochs take well under a second. The expected values are quoted from the released scripts
in tests/released_settings.py (file:line); the ``unified`` protocol's are the paper preset's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from released_settings import STEP_2, check_against, expected_ainfonce, expected_dynacl, expected_robustssl

import bench.evaluation.evaluate
import bench.evaluation.finetune
import bench.evaluation.scheme_run
from bench.config import SCHEMES, paper_preset
from bench.engine.data import ImageData
from bench.evaluation.scheme_run import BEST_EPOCH_METRIC, finetune_and_evaluate_scheme
from bench.methodkit import registry
from bench.store.results import RunDir

EPS_8 = 8 / 255

# The unified protocol under the paper preset: the suite's own settings for every method (docs/design.md §5;
# bench.config.paper_preset's FinetuneConfig), written out here so a change of them is a visible decision.
UNIFIED = dict(
    epochs=25,
    batch_size=512,
    lr=0.1,
    milestones=[15, 20],
    momentum=0.9,
    weight_decay=2e-4,
    augment=True,
    trades_beta=6.0,
    dual_bn=False,
    head_init="default",
    trades_start="noise",
    best_epoch=True,
    reported_epoch="last",
    eval_step_size=STEP_2,
)


def expected_unified(method: str, dataset: str, scheme: str) -> dict:
    return {**UNIFIED, "train_attack_steps": {"SLF": 0, "ALF": 20, "AFF": 10}[scheme]}


EXPECTED = {
    "unified": expected_unified,
    "robustssl": expected_robustssl,
    "ainfonce": expected_ainfonce,
    "dynacl": lambda method, dataset, scheme: expected_dynacl(method, scheme),
}
# Every family of each protocol that behaves differently (dataset cifar10: the released scripts' main rows).
CASES = [
    ("unified", "acl"),
    ("robustssl", "acl"),
    ("robustssl", "advcl"),
    ("robustssl", "rocl"),
    ("ainfonce", "advcl"),
    ("ainfonce", "advcl-ip"),
    ("ainfonce", "rocl"),
    ("dynacl", "acl"),
    ("dynacl", "rocl"),
]


@dataclass
class Seen:
    """What one finetuning and evaluation did, recorded by the spies."""

    optimizer: list[dict] = dataclasses.field(default_factory=list)  # per optimiser step: lr, momentum, wd
    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    augmented: int = 0
    batches: int = 0
    head_abs_sum: float | None = None
    train_attacks: list[dict] = dataclasses.field(default_factory=list)
    betas: list[float] = dataclasses.field(default_factory=list)
    eval_attacks: list[dict] = dataclasses.field(default_factory=list)
    settings: list = dataclasses.field(default_factory=list)
    last_ce: list[float] = dataclasses.field(default_factory=list)


def install_spies(monkeypatch, seen: Seen) -> None:
    """Recording stand-ins around finetune's and the evaluation's collaborators (attacks return x + 0.01)."""
    module = bench.evaluation.finetune
    real_sgd = torch.optim.SGD

    class RecordingSGD(real_sgd):
        def step(self, closure=None):
            group = self.param_groups[0]
            seen.optimizer.append({key: group[key] for key in ("lr", "momentum", "weight_decay")})
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)

    real_batches = module.batch_indices

    def batch_indices(n, batch_size, *args, **kwargs):
        seen.batch_sizes.append(batch_size)
        return real_batches(n, batch_size, *args, **kwargs)

    monkeypatch.setattr(module, "batch_indices", batch_indices)

    class RecordingAugment:
        def __call__(self, x, generator):
            seen.augmented += 1
            return x

    monkeypatch.setattr(module, "WeakAugment", RecordingAugment)
    real_build = module.build_classifier

    def build_classifier(*args, **kwargs):
        classifier = real_build(*args, **kwargs)
        seen.head_abs_sum = float(
            classifier.head.weight.detach().abs().sum() + classifier.head.bias.detach().abs().sum()
        )
        return classifier

    monkeypatch.setattr(module, "build_classifier", build_classifier)

    def pgd_train(model, x, y, *, epsilon, step_size, steps, generator):
        seen.train_attacks.append(dict(kind="pgd", epsilon=epsilon, step_size=step_size, steps=steps))
        return (x + 0.01).clamp(0, 1)

    def trades_attack(model, x, *, epsilon, step_size, steps, generator, clean_classifier=None, start="noise"):
        seen.train_attacks.append(
            dict(kind="trades", epsilon=epsilon, step_size=step_size, steps=steps, start=start, dual=clean_classifier)
        )
        return (x + 0.01).clamp(0, 1)

    monkeypatch.setattr(module, "pgd_cross_entropy", pgd_train)
    monkeypatch.setattr(module, "trades_kl_attack", trades_attack)
    real_ce, real_kl = F.cross_entropy, F.kl_div

    def cross_entropy(*args, **kwargs):
        value = real_ce(*args, **kwargs)
        seen.last_ce.append(float(value.detach()))
        return value

    def unit_kl(*args, **kwargs):  # value 1, real gradient: the loss minus its CE is the β it used
        value = real_kl(*args, **kwargs)
        return value - value.detach() + 1.0

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    monkeypatch.setattr(F, "kl_div", unit_kl)
    real_loss = module.scheme_loss

    def scheme_loss(classifier, settings, x, y, generator, *rest):  # rest: the post stage's reference_bn
        seen.batches += 1
        loss = real_loss(classifier, settings, x, y, generator, *rest)
        if settings.scheme == "AFF":
            seen.betas.append(float(loss.detach()) - seen.last_ce[-1])
        return loss

    monkeypatch.setattr(module, "scheme_loss", scheme_loss)
    real_finetune = bench.evaluation.scheme_run.finetune

    def finetune(settings, *args, **kwargs):
        seen.settings.append(settings)
        return real_finetune(settings, *args, **kwargs)

    monkeypatch.setattr(bench.evaluation.scheme_run, "finetune", finetune)

    def pgd_eval(model, x, y, *, epsilon, step_size, steps, generator):
        seen.eval_attacks.append(dict(epsilon=epsilon, step_size=step_size, steps=steps))
        return x

    monkeypatch.setattr(bench.evaluation.evaluate, "pgd_cross_entropy", pgd_eval)


def tiny_data() -> ImageData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 8), generator=generator, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    return ImageData("cifar10", images[:2], labels[:2], images[2:], labels[2:], 10)


def run_scheme(tmp_path, monkeypatch, protocol: str, method: str, scheme: str) -> tuple[Seen, list]:
    """One scheme of ``method`` under ``protocol`` (paper preset, CIFAR-10 settings) with every spy installed."""
    config = paper_preset()
    config.finetune.protocol = protocol
    config.device = "cpu"
    config.evaluate = dataclasses.replace(
        config.evaluate, attacks=("clean", "pgd20"), sanity=False, corruptions="none", epsilon_curve=()
    )
    seen = Seen()
    install_spies(monkeypatch, seen)
    spec = registry.get(method)()
    model = spec.build_model("small_cnn")
    torch.manual_seed(0)
    run_dir = RunDir(tmp_path / f"{protocol}-{method}-{scheme}")
    run_dir.path.mkdir(parents=True)
    rows = finetune_and_evaluate_scheme(
        model, spec.model.finetune_bn, tiny_data(), config, torch.device("cpu"), run_dir, scheme, method=method
    )
    return seen, rows


def applied(seen: Seen, scheme: str) -> dict:
    """The settings as the run applied them, in the names of ``SchemeSettings`` (one batch per epoch)."""
    first = seen.optimizer[0]
    drops = [
        epoch
        for epoch in range(1, len(seen.optimizer))
        if seen.optimizer[epoch]["lr"] < seen.optimizer[epoch - 1]["lr"]
    ]
    trades = [attack for attack in seen.train_attacks if attack["kind"] == "trades"]
    values = {
        "epochs": len(seen.optimizer),
        "batch_size": seen.batch_sizes[0],
        "lr": first["lr"],
        "milestones": drops,
        "momentum": first["momentum"],
        "weight_decay": first["weight_decay"],
        "augment": seen.augmented > 0,
        "train_attack_steps": seen.train_attacks[0]["steps"] if seen.train_attacks else 0,
        "head_init": "zeros" if seen.head_abs_sum == 0 else "default",
        "eval_step_size": seen.eval_attacks[-1]["step_size"],
    }
    if scheme == "AFF":
        values.update(
            trades_beta=round(seen.betas[0], 4),  # float32 arithmetic: β to 4 decimals
            trades_start=trades[0]["start"],
            dual_bn=trades[0]["dual"] is not None,
        )
    return values


@pytest.fixture
def one_thread():
    """Two 8-px images gain nothing from threads, and on a busy shared CPU a second thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.e2e
@pytest.mark.parametrize(("protocol", "method"), CASES)
@pytest.mark.usefixtures("one_thread")
def test_each_scheme_applies_the_released_settings_at_run_time(tmp_path, monkeypatch, protocol, method):
    for scheme in SCHEMES:
        where = f"{protocol} {method} {scheme}"
        expected = EXPECTED[protocol](method, "cifar10", scheme)
        with monkeypatch.context() as patch:
            seen, rows = run_scheme(tmp_path, patch, protocol, method, scheme)
        values = applied(seen, scheme)
        (settings,) = seen.settings
        # what the run carries for the fields a batch cannot show (SLF/ALF: no TRADES; the reported epoch)
        carried = {
            name: getattr(settings, name) for name in ("trades_beta", "trades_start", "dual_bn", "reported_epoch")
        }
        carried["best_epoch"] = any(row.metric == BEST_EPOCH_METRIC for row in rows)
        check_against(expected, {**carried, **values}, where)
        # every epoch: one lr, decayed ×0.1 at each milestone (MultiStepLR over 0-based epochs)
        lrs = [step["lr"] for step in seen.optimizer]
        schedule = [
            expected["lr"] * 0.1 ** sum(epoch >= m for m in expected["milestones"]) for epoch in range(len(lrs))
        ]
        assert lrs == pytest.approx(schedule, rel=1e-9), where
        assert seen.augmented == (seen.batches if expected["augment"] else 0), where  # every batch, or none
        # every training attack (ALF PGD, TRADES KL) at the threat model ε 8/255, step 2/255
        assert all(a["epsilon"] == EPS_8 and a["step_size"] == STEP_2 for a in seen.train_attacks), where
        assert {a["kind"] for a in seen.train_attacks} == {"SLF": set(), "ALF": {"pgd"}, "AFF": {"trades"}}[scheme]
        assert all(a["steps"] == expected["train_attack_steps"] for a in seen.train_attacks), where
        # every evaluation PGD (the per-epoch one behind the best-epoch rows and the final one): PGD-20 at ε 8/255
        per_epoch = expected["epochs"] if expected["best_epoch"] else 0
        assert len(seen.eval_attacks) == per_epoch + 1, where
        for attack in seen.eval_attacks:
            assert attack["epsilon"] == EPS_8 and attack["steps"] == 20, where
            assert attack["step_size"] == pytest.approx(expected["eval_step_size"], abs=3e-6), where
        if scheme == "AFF":
            assert seen.betas == pytest.approx([expected["trades_beta"]] * seen.batches, abs=1e-5), where
