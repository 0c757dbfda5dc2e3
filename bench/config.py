"""Dataclass configs, the ``smoke`` and ``paper`` presets, and validation.

One config tree describes a whole benchmark run. Presets fill it; every CLI flag overrides
one field (``--set pretrain.lr=0.5`` dotted names, plus short aliases), turned into the field's
type by ``coerce``; ``validate`` runs before any work and fails with one line naming the field,
the value and the allowed values. Methods add their own hyperparameters (``Method.Params``) and
their published settings per preset and dataset (``Method.published``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.choices import ATTACKS, DEVICES, PRESETS, PROTOCOLS, SCHEMES
from bench.coercion import coerce, dotted_names, field_types, invalid
from bench.engine.corruptions import CORRUPTIONS, SEVERITIES
from bench.engine.data import CORRUPTED_DATASETS, DATASETS
from bench.engine.models import ENCODERS
from bench.errors import ConfigError  # noqa: F401  (re-exported: many modules import it from here)

OPTIMIZERS = ("sgd", "lars", "lars-acl")  # see bench.engine.optim for the two LARS forms
CHANNELS_LAST = ("cuda", "always", "never")
HOST_SYNC = ("auto", "step", "epoch")  # pretrain.host_sync (bench.runs.train.sync_interval)
CORRUPTION_SOURCES = ("auto", "none", "regenerated", "official")  # see EvalConfig.corruptions


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: str = "~/data"
    download: bool = False
    image_size: int = 16
    eval_name: str = ""  # transfer: finetune/evaluate on another dataset ('' = same)


@dataclass
class ModelConfig:
    arch: str = "small_cnn"


@dataclass
class AttackConfig:
    """The attack used *inside pretraining* (methods may scale step or steps, e.g. RoCL)."""

    epsilon: float = 0.06
    step_size: float = 0.015
    steps: int = 3


@dataclass
class PretrainConfig:
    epochs: int = 8
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    warmup_start_lr: float = 0.0  # fraction of lr at step 0 of the warm-up
    min_lr_fraction: float = 1e-3  # cosine floor, as a fraction of lr
    lars_trust: float = 1e-3
    checkpoint_every: int = 50  # steps; the last step is always checkpointed
    # The released multi-GPU semantics on any device (bench.engine.shards): the batch as this many GPUs held
    # it (per-shard BatchNorm, per-shard attack where the released code had one, negatives gathered).
    shards: int = 1
    # Fast path (bench.runs.train): bf16 autocast, cuDNN autotuning and TF32 matrix products (CUDA only,
    # ignored on CPU); channels-last weights ('cuda': on CUDA only, so CPU numbers stay those of a
    # contiguous fp32 loop; 'always' also on CPU, ~1.5x faster pooling there but other rounding; 'never');
    # torch.compile of the model's forward (used by every PGD inner loop).
    amp: bool = False
    channels_last: str = "always"  # smoke; the paper preset keeps CPU numbers contiguous ('cuda')
    cudnn_benchmark: bool = True
    tf32: bool = True
    compile: bool = False
    compile_attack: bool = False  # CUDA graphs of the PGD inner loop's forwards (torch.compile 'reduce-overhead')
    host_sync: str = "auto"  # reads of the logged numbers: auto (step on CPU, 10 steps on GPU) | step | epoch


@dataclass
class FinetuneConfig:
    schemes: tuple[str, ...] = SCHEMES
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1.0  # SLF/ALF (linear head)
    full_lr: float = 0.1  # AFF (whole network)
    milestones: tuple[int, ...] = (2, 3)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    augment: bool = False  # random crop + flip (off for digits: a flipped digit is another digit)
    alf_steps: int = 5  # paper preset: PGD-20, as the released scripts
    trades_beta: float = 6.0
    trades_steps: int = 5  # paper preset: 10
    # Clean and PGD-20 accuracy after every epoch, for the best-on-test-epoch rows the released scripts print
    # (unified protocol; the others set it per source). Off in the smoke preset: on every test image it
    # would cost as much as the evaluation itself.
    best_epoch: bool = False
    # 'unified' = the fields above for every method; 'robustssl' / 'ainfonce' / 'dynacl' = their sources' settings
    # per method and scheme (bench.evaluation.protocols), which then replace the fields above
    protocol: str = "unified"


@dataclass
class EvalConfig:
    epsilon: float = 0.06
    step_size: float = 0.015
    pgd_steps: int = 20
    # smoke: APGD-CE (AutoAttack's first attack alone, its own column in every table) stands in for
    # AutoAttack, whose FAB-T and Square would take ~70 % of a smoke run; the paper preset runs 'autoattack'
    attacks: tuple[str, ...] = ("clean", "pgd20", "apgd-ce")
    # 0 = the whole test set (smoke: all 359 digits test images, so paired tests can see a 5-point
    # difference; docs/design.md §5)
    n_eval: int = 0
    subset_seed: int = 0  # which n_eval images: the same for every training seed, so seeds are comparable
    batch_size: int = (
        0  # 0 = auto: 256 on CPU, the largest that fits on a GPU (bench.evaluation.evaluate.eval_batch_size)
    )
    amp: bool = False  # bf16 autocast of the classifier inside the attacks (CUDA only; logits and PGD steps fp32)
    sanity: bool = True
    # Extra PGD-20 budgets (step scaled as step_size/epsilon) on the same classifiers: the
    # accuracy-vs-ε curve. Cheap next to AutoAttack.
    epsilon_curve: tuple[float, ...] = (0.03, 0.06, 0.09)
    # Common corruptions (bench.evaluation.corruption_eval, docs/corruptions.md): 'official' reads the CIFAR-10-C /
    # CIFAR-100-C files (eval datasets cifar10c / cifar100c), 'regenerated' corrupts the test subset with
    # the seeded CIFAR-C recipe (any dataset), 'none' skips them; 'auto' = 'official' for the -C eval
    # datasets, 'regenerated' on the embedded digits (~2 s for all 75), 'none' otherwise. A clean forward
    # per corruption × severity: cheap next to AutoAttack.
    corruptions: str = "auto"
    corruption_names: tuple[str, ...] = ()  # () = all 15 of CIFAR-10-C
    corruption_severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    corruption_schemes: tuple[str, ...] = ("SLF",)  # the classifiers evaluated on them (paper preset: all three)
    corruption_seed: int = 0  # the regeneration's seed (the same for every training seed, like subset_seed)


@dataclass
class RunConfig:
    preset: str = "smoke"
    methods: tuple[str, ...] = ("all",)
    seed: int = 0
    device: str = "auto"
    jobs: int = 0  # method runs in parallel: 0 = auto (one per core on CPU, 1 on CUDA)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    results_dir: str = "results"
    reports_dir: str = "reports"


FIELD_NAMES = dotted_names(RunConfig)  # what --set takes, for the "did you mean" of a mistyped one


def smoke_preset() -> RunConfig:
    """Small CNN on the embedded digits: every code path, minutes on a laptop CPU.

    ε = 0.06 (not 8/255): on digits it is the size at which PGD takes SimCLR's linear
    probe to near zero while adversarial CL keeps a clear margin. A smoke table is a
    working demonstration, never a result to compare with papers.

    Its evaluation is sized for ``bench run --methods all`` (13 runs) to stay within 10 minutes on a
    2-core CPU while a 5-point difference stays detectable: every one of the 359 test images (paired
    tests need them), APGD-CE instead of the full AutoAttack, a three-point ε curve, regenerated
    corruptions on the SLF classifier only, no per-epoch evaluation, channels-last pretraining.
    """
    return RunConfig()


EPS_8 = 8 / 255
STEP_2 = 2 / 255


def paper_preset() -> RunConfig:
    """The published settings: ResNet-18, CIFAR-10, ε 8/255 (docs/design.md §4-5).

    Per-method optimiser settings (LARS for ACL/RoCL, lr, epochs) come from the method's
    published settings (``Method.published``) on top of these shared defaults.
    """
    return RunConfig(
        preset="paper",
        data=DataConfig(name="cifar10", image_size=32),
        model=ModelConfig(arch="resnet18"),
        attack=AttackConfig(epsilon=EPS_8, step_size=STEP_2, steps=5),
        pretrain=PretrainConfig(
            epochs=400,
            batch_size=512,
            optimizer="sgd",
            lr=0.5,
            weight_decay=1e-4,
            warmup_epochs=10,
            warmup_start_lr=0.02,
            checkpoint_every=500,
            channels_last="cuda",
        ),
        finetune=FinetuneConfig(
            epochs=25,
            batch_size=512,
            lr=0.1,
            full_lr=0.1,
            milestones=(15, 20),
            augment=True,
            alf_steps=20,
            trades_steps=10,
            best_epoch=True,
        ),
        evaluate=EvalConfig(
            epsilon=EPS_8,
            step_size=STEP_2,
            n_eval=0,
            attacks=("clean", "pgd20", "autoattack"),
            epsilon_curve=(2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255),
            corruption_schemes=SCHEMES,
        ),
    )


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        invalid("preset", name, str(list(PRESETS)), PRESETS)
    return smoke_preset() if name == "smoke" else paper_preset()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in(low: float, high: float, *, low_open: bool = False) -> Any:
    """A range check that NaN and ±inf fail (plain comparisons let NaN through)."""
    return lambda value: _finite(value) and (value > low if low_open else value >= low) and value <= high


INTEGER_AT_LEAST = {  # field → minimum (integers)
    "seed": 0,
    "jobs": 0,
    "data.image_size": 8,
    "pretrain.epochs": 0,
    "pretrain.batch_size": 2,
    "pretrain.checkpoint_every": 1,
    "finetune.epochs": 1,
    "finetune.batch_size": 2,
    "finetune.alf_steps": 0,
    "finetune.trades_steps": 0,
    "evaluate.n_eval": 0,
    "evaluate.pgd_steps": 1,
    "evaluate.subset_seed": 0,
    "evaluate.batch_size": 0,
    "attack.steps": 0,
    "pretrain.shards": 1,
    "evaluate.corruption_seed": 0,
}
NUMBER_IN = {  # field → (check, allowed text)
    "pretrain.lr": (_in(0, math.inf, low_open=True), "finite numbers > 0"),
    "pretrain.momentum": (_in(0, 1), "numbers in [0, 1]"),
    "pretrain.weight_decay": (_in(0, math.inf), "finite numbers >= 0"),
    # bounded: the schedule turns it into a step count, and 1e308 epochs overflowed there after the run
    # was written (review 2, D14)
    "pretrain.warmup_epochs": (_in(0, 1e6), "numbers in [0, 1000000]"),
    "pretrain.warmup_start_lr": (_in(0, 1), "numbers in [0, 1] (a fraction of lr)"),
    "pretrain.min_lr_fraction": (_in(0, 1), "numbers in [0, 1] (a fraction of lr)"),
    "pretrain.lars_trust": (_in(0, math.inf, low_open=True), "finite numbers > 0"),
    "finetune.lr": (_in(0, math.inf, low_open=True), "finite numbers > 0"),
    "finetune.full_lr": (_in(0, math.inf, low_open=True), "finite numbers > 0"),
    "finetune.momentum": (_in(0, 1), "numbers in [0, 1]"),
    "finetune.weight_decay": (_in(0, math.inf), "finite numbers >= 0"),
    "finetune.trades_beta": (_in(0, math.inf), "finite numbers >= 0"),
    "attack.epsilon": (_in(0, 1), "numbers in [0, 1] (pixel scale)"),
    "attack.step_size": (_in(0, 1), "numbers in [0, 1] (pixel scale)"),
    "evaluate.epsilon": (_in(0, 1), "numbers in [0, 1] (pixel scale)"),
    "evaluate.step_size": (_in(0, 1), "numbers in [0, 1] (pixel scale)"),
}
# numpy's legacy seed takes [0, 2**32 - 1]; torch takes 64 bits, and the seeds derived from a run's
# seed (``epoch_order``: seed * 1_000_003 + epoch) stay far below that from this bound
SEED_FIELDS, MAX_SEED = ("seed", "evaluate.subset_seed", "evaluate.corruption_seed"), 2**32 - 1
MAX_IMAGE_SIZE = 1024  # larger images are a typo, not a benchmark (they exhaust memory before training)


def _get(config: RunConfig, dotted: str) -> Any:
    target: Any = config
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def validate(config: RunConfig) -> RunConfig:
    """Check every field with a finite set or a range (NaN and inf fail every range); raise
    ConfigError on the first bad one, before anything is written."""
    choices: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("preset", config.preset, PRESETS),
        ("device", config.device, DEVICES),
        ("data.name", config.data.name, tuple(sorted(DATASETS))),
        ("data.eval_name", config.data.eval_name, ("", *sorted(DATASETS))),
        ("model.arch", config.model.arch, tuple(sorted(ENCODERS))),
        ("pretrain.optimizer", config.pretrain.optimizer, OPTIMIZERS),
        ("pretrain.channels_last", config.pretrain.channels_last, CHANNELS_LAST),
        ("pretrain.host_sync", config.pretrain.host_sync, HOST_SYNC),
        ("finetune.protocol", config.finetune.protocol, PROTOCOLS),
    ]
    for name, value, allowed in choices:
        if value not in allowed:
            invalid(name, value, str(list(allowed)), allowed)
    for name, minimum in INTEGER_AT_LEAST.items():
        value = _get(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            invalid(name, value, f"integers >= {minimum}")
    for name in SEED_FIELDS:
        if _get(config, name) > MAX_SEED:
            invalid(name, _get(config, name), f"integers in [0, {MAX_SEED}]")
    if config.data.image_size > MAX_IMAGE_SIZE:
        invalid("data.image_size", config.data.image_size, f"integers in [8, {MAX_IMAGE_SIZE}]")
    for name, (check, allowed) in NUMBER_IN.items():
        if not check(_get(config, name)):
            invalid(name, _get(config, name), allowed)
    for value in config.evaluate.epsilon_curve:
        if not _in(0, 1)(value):
            invalid("evaluate.epsilon_curve", value, "numbers in [0, 1] (pixel scale)")
    for milestone in config.finetune.milestones:
        if isinstance(milestone, bool) or not isinstance(milestone, int) or milestone < 0:
            invalid("finetune.milestones", milestone, "integers >= 0")
    for scheme in config.finetune.schemes:
        if scheme not in SCHEMES:
            invalid("finetune.schemes", scheme, str(list(SCHEMES)), SCHEMES)
    for attack in config.evaluate.attacks:
        if attack not in ATTACKS:
            invalid("evaluate.attacks", attack, str(list(ATTACKS)), ATTACKS)
    if config.pretrain.batch_size % config.pretrain.shards:
        invalid(
            "pretrain.batch_size",
            config.pretrain.batch_size,
            f"multiples of pretrain.shards={config.pretrain.shards} (each shard holds an equal part of the batch)",
        )
    _validate_corruptions(config)
    for name in ("results_dir", "reports_dir"):
        if not str(getattr(config, name)).strip():
            invalid(name, getattr(config, name), "a directory path (not empty)")
        check_directory(name, getattr(config, name))
    if {config.data.name, config.data.eval_name} - {"", "digits"}:  # the embedded digits need no data_dir
        check_directory("data.data_dir", config.data.data_dir)
    return config


def check_directory(name: str, path: str | Path) -> None:
    """A directory the suite writes into or reads datasets from may be missing (it is created),
    but an existing file there would fail late with an OS traceback: refuse it up front."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        invalid(name, str(path), "a directory (this path is a file)")


def _validate_corruptions(config: RunConfig) -> None:
    """The corruption settings, and which datasets may be used where (the -C datasets only evaluate)."""
    settings = config.evaluate
    if config.data.name in CORRUPTED_DATASETS:
        invalid(
            "data.name",
            config.data.name,
            f"a pretraining dataset, not {sorted(CORRUPTED_DATASETS)} (evaluation only: --eval-dataset)",
        )
    if settings.corruptions not in CORRUPTION_SOURCES:
        invalid("evaluate.corruptions", settings.corruptions, str(list(CORRUPTION_SOURCES)), CORRUPTION_SOURCES)
    eval_name = config.data.eval_name or config.data.name
    if settings.corruptions == "official" and eval_name not in CORRUPTED_DATASETS:
        invalid(
            "evaluate.corruptions",
            "official",
            f"with --eval-dataset {' or '.join(sorted(CORRUPTED_DATASETS))} "
            f"(the official files); use 'regenerated' for {eval_name!r}",
        )
    for name in settings.corruption_names:
        if name not in CORRUPTIONS:
            invalid("evaluate.corruption_names", name, str(list(CORRUPTIONS)), CORRUPTIONS)
    if len(set(settings.corruption_names)) != len(settings.corruption_names):
        invalid("evaluate.corruption_names", ",".join(settings.corruption_names), "distinct names")
    if not settings.corruption_severities or len(set(settings.corruption_severities)) != len(
        settings.corruption_severities
    ):
        invalid("evaluate.corruption_severities", settings.corruption_severities, "distinct severities, at least one")
    for severity in settings.corruption_severities:
        if severity not in SEVERITIES:
            invalid("evaluate.corruption_severities", severity, str(list(SEVERITIES)))
    for scheme in settings.corruption_schemes:
        if scheme not in SCHEMES:
            invalid("evaluate.corruption_schemes", scheme, str(list(SCHEMES)), SCHEMES)


# ------------------------------------------------------------------ overrides and hashing


def set_field(config: RunConfig, dotted: str, raw: Any) -> None:
    """Override one field by dotted name (``pretrain.lr``), coercing to the field's type."""
    parts = dotted.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in field_types(type(target)):
            invalid("field", dotted, "dotted names of RunConfig fields (see `bench run --help`)", FIELD_NAMES)
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or parts[-1] not in field_types(type(target)):
        invalid("field", dotted, "dotted names of RunConfig fields (see `bench run --help`)", FIELD_NAMES)
    hint = field_types(type(target))[parts[-1]]
    if dataclasses.is_dataclass(hint) or typing.get_origin(hint) is dict:
        invalid("field", dotted, "dotted names of single RunConfig fields, not of a section")
    setattr(target, parts[-1], coerce(hint, raw, dotted))


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def config_hash(payload: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
