"""Defaults pinned to their sources (issue 24 §2; fidelity audit 2's surviving M20, M34, M35, M36).

The step fixtures pass every method parameter explicitly, so a class default could drift unseen while the
smoke preset (the default one) and every run without ``--param`` use it. Here each default of a method's
``Params`` and each published value of the presets is quoted with the released file it comes from; the
smoke preset's values, which are the suite's own choices, are pinned whole, so changing one is a visible
decision. A parameter added to a ``Params`` class without a row here fails ``test_every_params_field_is_pinned``.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench.config import paper_preset, smoke_preset, to_dict
from bench.methodkit import registry
from bench.methodkit.method import MethodParams
from bench.methodkit.post import PostParams

AINFONCE = "yqy2001/A-InfoNCE@b28763e "
ADVCL = AINFONCE + "Asym-AdvCL/pretraining_advCL.py"
DYNACL = "PKU-ML/DYNACL@7d143db "
AIR = "GodXuxilie/Enhancing_ACL_via_AIR@15cf0a7 "
DEACL = "pantheon5100/DeACL@3fb81e3 "
SUITE = "the suite's own (no released value): "

# (Params class name, field) -> (default, where it comes from)
DEFAULTS = {
    # bench.methodkit.method.MethodParams: the A-InfoNCE knobs, shared by every method
    ("MethodParams", "temperature"): (
        0.5,
        ADVCL + " l.50 (-t/--nce_t 0.5); Asym-RoCL/argument.py l.130 (parser() of rocl_train.py: --temperature 0.5)",
    ),
    ("MethodParams", "alpha"): (0.2, AINFONCE + "Asym-AdvCL/shell/cifar10/advcl-IP-cifar10.sh l.3 (--stpg_degree 0.2)"),
    ("MethodParams", "adv_weight"): (1.0, ADVCL + " l.80 (--adv_weight 1)"),
    ("MethodParams", "adaptive_epochs"): (0, ADVCL + " l.86 (--stop_grad_adaptive -1: off)"),
    ("MethodParams", "d_min"): (0.4, ADVCL + " l.81 (--d_min 0.4)"),
    ("MethodParams", "beta"): (1.0, ADVCL + " l.76 (--beta 1.0)"),
    ("MethodParams", "tau_plus"): (0.1, ADVCL + " l.75 (--tau_plus 0.1)"),
    ("MethodParams", "quirks"): ("none", SUITE + "the A-InfoNCE formulas; 'official' is chosen by a protocol"),
    # methods/advcl.py
    ("AdvCLParams", "ce_weight"): (0.2, ADVCL + " l.46 (--ce_weight 0.2)"),
    ("AdvCLParams", "hfc_radius"): (8, ADVCL + " l.44 (--radius 8)"),
    ("AdvCLParams", "pseudo_labels"): ("", SUITE + "'' = per preset (bench.methodkit.downloads)"),
    ("AdvCLParams", "pseudo_label_encoder"): ("", SUITE + "'' = raw pixels when no file is given"),
    ("AdvCLParams", "pseudo_label_ks"): ((2, 10, 50, 100, 500), ADVCL + " l.148 (num_classes_list)"),
    # methods/air.py
    ("AIRParams", "lambda_sir"): (0.5, AIR + "pretraining.py l.37 (--lambda1 0.5)"),
    ("AIRParams", "lambda_air"): (0.5, AIR + "pretraining.py l.38 (--lambda2 0.5)"),
    ("DynamicAIRParams", "anneal_lambda"): (2 / 3, DYNACL + "train_DynACL.py l.47-48 (--swap_param 2/3)"),
    ("DynamicAIRParams", "anneal_period"): (50, DYNACL + "train_DynACL.py l.57 (--reload_frequency 50)"),
    # methods/deacl.py
    ("DeACLParams", "teacher"): ("", SUITE + "'' = the harness supplies the simclr encoder"),
    ("DeACLParams", "teacher_format"): ("bench", SUITE + "the suite's own checkpoint format"),
    ("DeACLParams", "distill_weight"): (2.0, DEACL + "bash_files/DeACL_cifar10_resnet18.sh l.30 (--trades_k 2)"),
    ("DeACLParams", "student_init"): (
        "teacher",
        DEACL + "solo/methods/base_for_adversarial_training.py l.942 (student_scratch off: the teacher's weights)",
    ),
    # methods/dynacl.py
    ("DynACLParams", "form"): ("dynacl", DYNACL + "train_DynACL.py (the released EMA form)"),
    ("DynACLParams", "key_momentum"): (0.99, DYNACL + "models/resnet_multi_bn.py l.488 (resnet18_momentum m=0.99)"),
    ("DynACLParams", "anneal_lambda"): (2 / 3, DYNACL + "train_DynACL.py l.47-48 (--swap_param 2/3)"),
    ("DynACLParams", "anneal_period"): (50, DYNACL + "train_DynACL.py l.57 (--reload_frequency 50)"),
    # methods/rocl.py
    ("RoCLParams", "regularizer_lambda"): (256.0, AINFONCE + "Asym-RoCL/argument.py l.99 (--lamda 256)"),
    ("RoCLParams", "attack_steps"): (None, SUITE + "None = the preset's attack (paper: 7 via Published)"),
    ("RoCLParams", "attack_step_size"): (None, SUITE + "None = the preset's attack (paper: 0.007 via Published)"),
    # bench.methodkit.post.PostParams (DynACL++ / DynACL-AIR++ post stage): DYNACL LPAFT.py
    ("PostParams", "post_clusters"): (10, DYNACL + "assign_label.py (10 clusters)"),
    ("PostParams", "post_head_epochs"): (10, DYNACL + "LPAFT.py l.34 (--epochs_head 10)"),
    ("PostParams", "post_epochs"): (25, DYNACL + "LPAFT.py l.36 (--epochs 25)"),
    ("PostParams", "post_milestones"): ((10, 20), DYNACL + "LPAFT.py l.168-169 (MultiStepLR [10, 20])"),
    ("PostParams", "post_batch_size"): (512, DYNACL + "LPAFT.py l.32 (--batch_size 512)"),
    ("PostParams", "post_attack_steps"): (10, DYNACL + "LPAFT.py l.274 (perturb_steps=10)"),
}


def owner(params_class: type, name: str) -> str:
    """The class of the MRO that declares field ``name`` (rows are keyed by the declaring class)."""
    for klass in params_class.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return klass.__name__
    raise AssertionError(f"{params_class.__name__}.{name}: no declaring class")


def default_of(field: dataclasses.Field):
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def params_classes() -> dict[str, type]:
    classes = {method.Params.__name__: method.Params for method in registry.available().values()}
    return {**classes, "MethodParams": MethodParams, "PostParams": PostParams}


def test_every_params_field_is_pinned():
    """Each field of each registered method's Params (inherited ones through their declaring class) has a row."""
    unpinned = sorted(
        f"{owner(params, field.name)}.{field.name}"
        for params in params_classes().values()
        for field in dataclasses.fields(params)
        if (owner(params, field.name), field.name) not in DEFAULTS
    )
    assert not unpinned, f"Params fields without a pinned default and source: {unpinned}"


@pytest.mark.parametrize(("key", "pinned"), DEFAULTS.items(), ids=[f"{c}.{f}" for c, f in DEFAULTS])
def test_params_default_is_the_released_value(key, pinned):
    class_name, name = key
    value, source = pinned
    params = params_classes()[class_name]
    defaults = {field.name: default_of(field) for field in dataclasses.fields(params)}
    assert defaults[name] == pytest.approx(value) if isinstance(value, float) else defaults[name] == value, (
        f"{class_name}.{name} = {defaults[name]!r}; {source} says {value!r}"
    )
    for method in registry.available().values():  # every subclass keeps it unless it declares its own
        if issubclass(method.Params, params) and owner(method.Params, name) == class_name:
            assert getattr(method.Params(), name) == defaults[name], (method.name, name)


# Published values of the paper preset, each with its released source. The threat model of pretraining,
# finetuning and evaluation is the same in every source: ε 8/255, step 2/255.
PAPER = {
    "attack.epsilon": (8 / 255, ADVCL + " l.40 (--epsilon 8, /255 at l.112)"),
    "attack.step_size": (2 / 255, ADVCL + " l.114 ('step_size': 2.0 / 255)"),
    "attack.steps": (5, ADVCL + " l.42 (--iter 5)"),
    "data.name": ("cifar10", ADVCL + " l.54 (--dataset cifar10)"),
    "data.image_size": (32, "CIFAR-10's 32 px"),
    "model.arch": ("resnet18", ADVCL + " (ResNet-18 encoder); every source's ResNet-18"),
    "pretrain.batch_size": (512, ADVCL + " l.34 (--batch_size 512)"),
    "pretrain.lr": (0.5, ADVCL + " l.59 (--learning_rate 0.5)"),
    "pretrain.momentum": (0.9, ADVCL + " l.67 (--momentum 0.9)"),
    "pretrain.weight_decay": (1e-4, ADVCL + " l.65 (--weight_decay 1e-4)"),
    "finetune.epochs": (25, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.87 (--epochs 25)"),
    "finetune.batch_size": (512, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.83 (--batch_size 512)"),
    "finetune.lr": (0.1, AINFONCE + "Asym-AdvCL/shell/cifar10/advcl-cifar10.sh l.7 (--learning_rate 0.1)"),
    "finetune.full_lr": (0.1, AINFONCE + "Asym-AdvCL/shell/cifar10/advcl-cifar10.sh l.9 (AFF_trades, 0.1)"),
    "finetune.milestones": ((15, 20), AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.346-348, l.382"),
    "finetune.momentum": (0.9, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.94 (--momentum 0.9)"),
    "finetune.weight_decay": (2e-4, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.92 (--weight_decay 2e-4)"),
    "finetune.augment": (True, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.30-31 (crop + flip)"),
    "finetune.alf_steps": (20, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.139-142 (train=False: 20 steps)"),
    "finetune.trades_steps": (10, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.240 (num_steps_train 10)"),
    "finetune.trades_beta": (6.0, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.241 (beta 6.0)"),
    "evaluate.epsilon": (8 / 255, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.181-187 (PGD-20 at 8/255)"),
    "evaluate.step_size": (2 / 255, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.181-187 (step 2/255)"),
    "evaluate.pgd_steps": (20, AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.181-187 (20 steps)"),
}


def dotted(config, name: str):
    section, field = name.split(".")
    return getattr(getattr(config, section), field)


@pytest.mark.parametrize(("name", "pinned"), PAPER.items(), ids=list(PAPER))
def test_paper_preset_value_is_the_released_one(name, pinned):
    value, source = pinned
    actual = dotted(paper_preset(), name)
    assert actual == (pytest.approx(value) if isinstance(value, float) else value), (
        f"paper preset {name} = {actual!r}; {source} says {value!r}"
    )


# The smoke preset: the suite's own choices (bench.config.smoke_preset's docstring says why), every field.
SMOKE = {
    "preset": "smoke",
    "methods": ["all"],
    "seed": 0,
    "device": "auto",
    "jobs": 0,
    "data": {"name": "digits", "data_dir": "~/data", "download": False, "image_size": 16, "eval_name": ""},
    "model": {"arch": "small_cnn"},
    "attack": {"epsilon": 0.06, "step_size": 0.015, "steps": 3},
    "pretrain": {
        "epochs": 8,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.5,
        "momentum": 0.9,
        "weight_decay": 0.0001,
        "warmup_epochs": 1.0,
        "warmup_start_lr": 0.0,
        "min_lr_fraction": 0.001,
        "lars_trust": 0.001,
        "checkpoint_every": 50,
        "shards": 1,
        "amp": False,
        "channels_last": "always",
        "cudnn_benchmark": True,
        "tf32": True,
        "compile": False,
        "compile_attack": False,
        "host_sync": "auto",
    },
    "finetune": {
        "schemes": ["SLF", "ALF", "AFF"],
        "epochs": 4,
        "batch_size": 128,
        "lr": 1.0,
        "full_lr": 0.1,
        "milestones": [2, 3],
        "momentum": 0.9,
        "weight_decay": 0.0002,
        "augment": False,
        "alf_steps": 5,
        "trades_beta": 6.0,
        "trades_steps": 5,
        "best_epoch": False,
        "protocol": "unified",
    },
    "evaluate": {
        "epsilon": 0.06,
        "step_size": 0.015,
        "pgd_steps": 20,
        "attacks": ["clean", "pgd20", "apgd-ce"],
        "n_eval": 0,
        "subset_seed": 0,
        "batch_size": 0,
        "amp": False,
        "sanity": True,
        "epsilon_curve": [0.03, 0.06, 0.09],
        "corruptions": "auto",
        "corruption_names": [],
        "corruption_severities": [1, 2, 3, 4, 5],
        "corruption_schemes": ["SLF"],
        "corruption_seed": 0,
    },
    "method_params": {},
    "results_dir": "results",
    "reports_dir": "reports",
}


def test_smoke_preset_is_pinned_whole():
    assert to_dict(smoke_preset()) == SMOKE


def test_smoke_runs_use_the_class_defaults_for_the_released_weights():
    """The smoke preset publishes no override of these (so the class defaults above are what it trains with)."""
    for name, field, value in (("advcl", "ce_weight", 0.2), ("deacl", "distill_weight", 2.0)):
        method = registry.get(name)
        assert field not in method.published("smoke", "digits").params
        assert getattr(method.make_params(dict(method.published("smoke", "digits").params)), field) == value
    dynacl = registry.get("dynacl")
    assert dynacl.make_params(dict(dynacl.published("smoke", "digits").params)).key_momentum == 0.99


# The paper preset's values that are the suite's own choices (no single released script sets them; docs/design.md
# §4-5): the whole preset is pinned, released values above and these here, so a change of either is visible.
PAPER_OWN = {
    "pretrain.epochs": 400,  # AdvCL's --epoch 400 runs (advcl-IP-cifar10.sh l.3); methods' rows override it
    "pretrain.optimizer": "sgd",
    "pretrain.warmup_epochs": 10,
    "pretrain.warmup_start_lr": 0.02,
    "pretrain.min_lr_fraction": 0.001,
    "pretrain.lars_trust": 0.001,
    "pretrain.checkpoint_every": 500,
    "pretrain.shards": 1,
    "pretrain.amp": False,  # fp32 until scripts/precision_check.py has passed on a GPU (issue 23; docs/speed.md)
    "pretrain.channels_last": "cuda",
    "pretrain.cudnn_benchmark": True,
    "pretrain.tf32": True,
    "pretrain.compile": False,
    "pretrain.compile_attack": False,
    "pretrain.host_sync": "auto",
    "finetune.schemes": ["SLF", "ALF", "AFF"],
    "finetune.best_epoch": True,
    "finetune.protocol": "unified",
    "evaluate.attacks": ["clean", "pgd20", "autoattack"],
    "evaluate.n_eval": 0,
    "evaluate.subset_seed": 0,
    "evaluate.batch_size": 0,
    "evaluate.amp": False,
    "evaluate.sanity": True,
    "evaluate.epsilon_curve": [2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255],
    "evaluate.corruptions": "auto",
    "evaluate.corruption_names": [],
    "evaluate.corruption_severities": [1, 2, 3, 4, 5],
    "evaluate.corruption_schemes": ["SLF", "ALF", "AFF"],
    "evaluate.corruption_seed": 0,
}


def test_paper_preset_is_pinned_whole():
    config = to_dict(paper_preset())
    expected = {**{name: value for name, (value, _) in PAPER.items()}, **PAPER_OWN}
    listed = {
        f"{section}.{name}" for section in ("attack", "pretrain", "finetune", "evaluate") for name in config[section]
    }
    listed |= {"data.name", "data.image_size", "model.arch"}
    assert listed == set(expected), f"paper preset fields without a pinned value: {sorted(listed - set(expected))}"
    for name, value in expected.items():
        section, field = name.split(".")
        actual = config[section][field]
        if isinstance(value, (list, tuple)):
            assert list(actual) == pytest.approx(list(value)), name
        else:
            assert actual == (pytest.approx(value) if isinstance(value, float) else value), name
