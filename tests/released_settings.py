"""Every finetuning setting of each protocol, quoted from the released scripts (file:line at the pinned commit).

Shared by tests/test_protocols.py (the dry-run) and tests/test_settings_applied.py (what a run applies).
Each ``expected_*`` returns ALL the fields a protocol decides (``bench.evaluation.protocols.PROTOCOL_FIELDS``,
with the evaluation PGD's absolute step ``eval_step_size`` instead of its ratio to ε): a field left out
would be a setting nothing checks (fidelity audit 2: robustssl's TRADES β, momentum and start survived
that way). The values are written here independently of the table they check, and ``complete`` refuses
an expectation that misses one.
"""

from __future__ import annotations

import pytest

from bench.evaluation.protocols import PROTOCOL_FIELDS

STEP_2 = 2 / 255  # every source's evaluation and training PGD step (--step_size / --alpha 2/255)
CHECKED_FIELDS = tuple(name for name in PROTOCOL_FIELDS if name != "eval_step_ratio") + ("eval_step_size",)

# ------------------------------------------------------------------ ainfonce: yqy2001/A-InfoNCE@b28763e
# Asym-AdvCL/finetuning_advCL_SLF.py: --batch_size 512 (l.83), --epochs 25 (l.87), --weight_decay 2e-4 (l.92),
# --momentum 0.9 (l.94), RandomCrop(32, padding=4) + flip (l.30-31), adjust_lr: epoch >= 15, >= 20 with
# epoch - 1 of a 1-based loop (l.346-348, l.382), nn.Linear head, default initialisation (l.164), AttackPGD
# train=False -> 20 steps (l.139-142) for ALF, AFF_trades num_steps_train = 10 and beta = 6.0 (l.240-241) with
# trades.py's x + 0.001·N(0, 1) start (l.30), best test PGD epoch (l.402-406), evaluation PGD-20 at 8/255, 2/255
# (l.181-187). Shell scripts: advcl-cifar10.sh --learning_rate 0.1 for SLF/ALF/AFF (l.7-9);
# advcl-{IP,HN,IPHN}-cifar10.sh --learning_rate 0.01 for SLF and ALF, 0.1 for AFF_trades (l.5-7);
# every cifar100 script 0.1.
ADVCL_HALF = dict(
    epochs=25,
    batch_size=512,
    milestones=[15, 20],
    momentum=0.9,
    weight_decay=2e-4,
    augment=True,
    trades_beta=6.0,
    dual_bn=False,
    head_init="default",
    trades_start="noise",
    best_epoch=True,
    reported_epoch="best",
    eval_step_size=STEP_2,
)
# Asym-RoCL: shell/rocl-*.sh linear_eval.py --batch-size=1024 --epoch 150 --lr 0.1 (l.8-9); linear_eval.py
# SGD(momentum=0.9, weight_decay=5e-4) (l.111), inputs = ori unless --trans (l.163-166), adjust_lr after each
# epoch: epoch >= 30/50/100 (l.259-265, l.306-308) -> the lr drops from epochs 31, 51, 101; robustness_test.py
# --epsilon=0.0314 --alpha=0.00314 --k=20 (shell l.13-15) on the last epoch. The per-epoch evaluation
# (best_epoch) is the suite's extra row, kept apart from the reported last epoch.
ROCL_EVAL_STEP = 0.00314  # --alpha=0.00314 for robustness_test.py and rocl_finetune.py
ROCL_COMMON = dict(
    momentum=0.9,
    augment=False,
    trades_beta=6.0,
    dual_bn=False,
    head_init="default",
    trades_start="noise",
    best_epoch=True,
    eval_step_size=ROCL_EVAL_STEP,
)
ROCL_SLF = dict(
    ROCL_COMMON,
    epochs=150,
    batch_size=1024,
    lr=0.1,
    milestones=[31, 51, 101],
    weight_decay=5e-4,
    train_attack_steps=0,
    reported_epoch="last",
)
# shell/rocl-*.sh rocl_finetune.py --batch-size=1024 --epoch 25 --lr 0.1 --epsilon=0.0314 --alpha=0.00314 (l.17-24);
# rocl_finetune.py --weight_decay 2e-4 (l.65), --momentum 0.9 (l.67), adjust_lr after each epoch: epoch >= 15, 20
# (l.430-433, l.486-488), ALF AttackPGD train=False -> 20 steps (l.151-154, l.304), AFF_trades 10 steps and
# beta = 6.0 (l.326-327) with Asym-RoCL/trades.py's x + 0.001·N(0, 1) start (l.29), best epoch (l.490-492).
ROCL_FINETUNE = dict(
    ROCL_COMMON, epochs=25, batch_size=1024, lr=0.1, milestones=[16, 21], weight_decay=2e-4, reported_epoch="best"
)


def expected_ainfonce(method: str, dataset: str, scheme: str) -> dict:
    if method.startswith("rocl"):
        if scheme == "SLF":
            return ROCL_SLF
        return {**ROCL_FINETUNE, "train_attack_steps": 20 if scheme == "ALF" else 10}
    variant = method != "advcl"
    lr = 0.01 if variant and dataset == "cifar10" and scheme in ("SLF", "ALF") else 0.1
    return {**ADVCL_HALF, "lr": lr, "train_attack_steps": {"SLF": 0, "ALF": 20, "AFF": 10}[scheme]}


# ------------------------------------------------------------------ robustssl: GodXuxilie/RobustSSL_Benchmark@19dc714
# Finetuning_Methods/Vanilla_Finetuning. vanilla_finetuning.py defaults: --dualBN 1 (l.19), --epochs 25,
# --weight-decay 2e-4 (l.36), --lr 0.1 (l.38), --momentum 0.9 (l.40), --decreasing_lr '15,20' (l.42),
# --num-steps-train 10, --test_frequency 0 (l.68: last epoch, no per-epoch test). utils.py: crop+flip (l.406-411),
# get_model zeroes fc (head) for every mode (l.532-533, l.550-551); trades_loss_dual starts at
# x + 0.001·N(0, 1) (l.609) and weighs the KL by LAMBDA2 = 6.0 (l.637); setup_hyperparameter: ACL SLF/ALF batch
# 512, lr 0.01 (cifar10) / 0.05 (cifar100), decreasing_lr '10,20'; ACL AFF lr 0.1, batch 128, epochs 100, '40,60',
# dual BN; AdvCL / A-InfoNCE SLF/ALF '15,20', 512, 0.01; AFF 128, '15,20', 0.1, --dualBN 0 (run_vanilla_tune.sh);
# anything else (RoCL): batch 128, '15,20', lr 0.1.
RSSL = dict(
    momentum=0.9,
    weight_decay=2e-4,
    augment=True,
    trades_beta=6.0,
    head_init="zeros",
    trades_start="noise",
    best_epoch=False,
    reported_epoch="last",
    eval_step_size=STEP_2,
)
# setup_hyperparameter (utils.py l.803-884), per --pretraining: ACL and DynACL SLF/ALF (l.806-819, l.829-842):
# batch and lr by dataset (cifar10 512/0.01, cifar100 512/0.05, stl10 at --resize 96 512/0.1, at 32 128/0.01;
# any other dataset keeps the defaults 128/0.1), '10,20'; ACL AFF (l.820-824) 0.1, 128, 100 epochs, '40,60';
# DynACL AFF (l.843-849) '10,20' on stl10 at 96 px, else '15,20', 128, 0.1; AdvCL, A-InfoNCE and DeACL
# (l.854-884) SLF/ALF '15,20', 512, 0.01 and AFF 128, '15,20', 0.1. Dual BN: --dualBN 1 by default, 0 for
# AdvCL, A-InfoNCE and DeACL (run_vanilla_tune.sh l.4-6); it only matters in AFF's trades_loss_dual.
RSSL_LINEAR_BY_DATA = {("cifar10", 32): (512, 0.01), ("cifar100", 32): (512, 0.05), ("stl10", 96): (512, 0.1)}
RSSL_LINEAR_BY_DATA[("stl10", 32)] = (128, 0.01)
RSSL_FAMILIES = {  # the suite's methods -> setup_hyperparameter's --pretraining branch
    "ACL": ("acl", "acl-ip", "acl-hn", "acl-iphn"),
    "DynACL": ("dynacl", "dynacl++"),
    "AdvCL": ("advcl",),
    "A-InfoNCE": ("advcl-ip", "advcl-hn", "advcl-iphn"),
    "DeACL": ("deacl",),
}


def expected_robustssl(method: str, dataset: str, scheme: str, image_size: int = 32) -> dict:
    family = next((name for name, methods in RSSL_FAMILIES.items() if method in methods), "else")
    values = {**RSSL, "epochs": 25, "batch_size": 128, "lr": 0.1, "milestones": [15, 20], "dual_bn": False}
    values["train_attack_steps"] = {"SLF": 0, "ALF": 10, "AFF": 10}[scheme]
    if family in ("ACL", "DynACL") and scheme != "AFF":
        batch, lr = RSSL_LINEAR_BY_DATA.get((dataset, image_size), (128, 0.1))
        values.update(batch_size=batch, lr=lr, milestones=[10, 20])
    elif family == "ACL":
        values.update(epochs=100, milestones=[40, 60], dual_bn=True)
    elif family == "DynACL":
        values.update(milestones=[10, 20] if (dataset, image_size) == ("stl10", 96) else [15, 20], dual_bn=True)
    elif family in ("AdvCL", "A-InfoNCE", "DeACL") and scheme != "AFF":
        values.update(batch_size=512, lr=0.01)
    return values


# ------------------------------------------------------------------ dynacl: PKU-ML/DYNACL@7d143db
# test_LF.py: --batch-size 512, --epochs 25, --wd 2e-4, --lr 0.01 (l.29-38), --momentum 0.9 (l.40),
# --num-steps-train 10 (ALF pgd_attack), --decreasing_lr '10,20' (l.62), zero fc (l.333-335, cvt_state_dict),
# --test_frequency 0 (l.71: last epoch), final PGD-20 at --epsilon 8/255, --step_size 2/255 (l.277-279).
# test_AFF.py: --batch-size 128, --epochs 25, --wd 2e-4, --lr 0.1, --momentum 0.9 (l.44), 10 steps,
# --beta 6.0 (l.56), --decreasing_lr '15,20' (l.69), zero fc, trades_loss_dual(natural_mode='normal'), whose
# x_adv starts at x_natural itself (utils.py l.410).
DYNACL_COMMON = dict(
    momentum=0.9,
    weight_decay=2e-4,
    augment=True,
    trades_beta=6.0,
    head_init="zeros",
    best_epoch=False,
    reported_epoch="last",
    eval_step_size=STEP_2,
)
DYNACL_LF = dict(epochs=25, batch_size=512, lr=0.01, milestones=[10, 20], trades_start="noise")
DYNACL_AFF = dict(epochs=25, batch_size=128, lr=0.1, milestones=[15, 20], trades_start="clean")


def expected_dynacl(method: str, scheme: str) -> dict:
    if scheme == "AFF":
        dual = not method.startswith(("rocl", "simclr", "deacl"))  # test_AFF.py's model has BN normal and pgd
        return {**DYNACL_COMMON, **DYNACL_AFF, "train_attack_steps": 10, "dual_bn": dual}
    return {**DYNACL_COMMON, **DYNACL_LF, "train_attack_steps": 10 if scheme == "ALF" else 0, "dual_bn": False}


def complete(expected: dict, where: str) -> dict:
    """``expected`` if it names every checked field (an expectation with a gap checks nothing there)."""
    missing = [name for name in CHECKED_FIELDS if name not in expected]
    assert not missing, f"{where}: the expectation leaves out {missing}"
    return expected


def check_against(expected: dict, finetune: dict, where: str) -> None:
    """Every field of ``finetune`` (a ``SchemeSettings.to_dict()`` or the values a run applied) equals the source."""
    for key, value in complete(expected, where).items():
        actual = finetune[key]
        tolerance = 3e-6 if key == "eval_step_size" else 1e-12  # ε/10 at ε = 8/255 vs the literal 0.00314
        assert actual == pytest.approx(value, abs=tolerance), f"{where}: {key} = {actual!r}, the source says {value!r}"
