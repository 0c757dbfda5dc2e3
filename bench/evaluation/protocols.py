"""Finetuning protocols as data: ``unified`` (the suite's own), ``robustssl``, ``ainfonce`` and ``dynacl``.

A protocol decides how an encoder is finetuned (SLF / ALF / AFF) and which number is the
result. ``unified`` is one set of settings for every method, read from the run's
``FinetuneConfig`` (docs/design.md §5). The other two follow a released code base method by
method (fidelity review D2, D8, D11; docs/protocols.md):

- ``robustssl``: GodXuxilie/RobustSSL_Benchmark ``Finetuning_Methods/Vanilla_Finetuning``
  (``vanilla_finetuning.py`` argparse defaults, ``utils.py`` ``setup_hyperparameter``,
  ``get_model``, ``trades_loss_dual``), the protocol behind the RobustSSL leaderboard;
- ``ainfonce``: the scripts of yqy2001/A-InfoNCE (``Asym-AdvCL/finetuning_advCL_SLF.py`` and
  its shell scripts for the AdvCL half; ``Asym-RoCL/linear_eval.py``, ``robustness_test.py``
  and ``rocl_finetune.py`` for the RoCL half), with the losses' released arithmetic;
- ``dynacl``: PKU-ML/DYNACL ``test_LF.py`` (SLF, ALF) and ``test_AFF.py`` (dual-BN TRADES), one set
  of settings for every method: the scripts AIR's first release and ASTrA reused verbatim, so the
  de-facto protocol of the 2023-2025 papers (docs/protocols.md).

Each protocol is a table: a ``base`` (the source's defaults), the method families it covers
(registry names or shell-style patterns), and ``Rule``s that set values for a family, a
finetuning dataset and some schemes, each citing file and lines at a pinned commit. Values
are absolute, as in the source, whatever the preset; the threat model (ε and the training
attack's step) stays the run's (``evaluate.epsilon``/``step_size``): both sources use 8/255
and 2/255, the paper preset's. ``bench.evaluation.protocol_resolution.resolve`` applies base then
matching rules in table order.

Milestones are ``torch.optim.lr_scheduler.MultiStepLR`` milestones over 0-based epochs (the
lr is divided from that epoch on). The RoCL half sets its lr *after* each epoch from that
epoch's index (``adjust_lr(epoch)`` at the end of the loop), so its "30/50/100" divide from
epochs 31/51/101 and its "15/20" from 16/21; the AdvCL half sets it before each epoch from
``epoch - 1`` (1-based loop), so "15/20" are 15/20.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.config import SCHEMES  # the names live in the config, which validates them

# SchemeSettings fields a protocol other than 'unified' decides (the FinetuneConfig fields behind them
# may not be overridden by the user under such a protocol: see ``PROTOCOL_CONFIG_FIELDS``).
PROTOCOL_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "milestones",
    "momentum",
    "weight_decay",
    "augment",
    "train_attack_steps",
    "trades_beta",
    "dual_bn",
    "head_init",
    "trades_start",
    "eval_step_ratio",
    "best_epoch",
    "reported_epoch",
)
PROTOCOL_CONFIG_FIELDS = (
    "finetune.epochs",
    "finetune.batch_size",
    "finetune.lr",
    "finetune.full_lr",
    "finetune.milestones",
    "finetune.momentum",
    "finetune.weight_decay",
    "finetune.augment",
    "finetune.alf_steps",
    "finetune.trades_beta",
    "finetune.trades_steps",
)
HEAD_INITS = ("default", "zeros")
REPORTED_EPOCHS = ("last", "best")

ROBUSTSSL = "GodXuxilie/RobustSSL_Benchmark@19dc714 Finetuning_Methods/Vanilla_Finetuning/"
AINFONCE = "yqy2001/A-InfoNCE@b28763e "


@dataclass(frozen=True)
class Rule:
    """Values of some ``SchemeSettings`` fields for one method family, dataset and set of schemes."""

    family: str  # a key of Protocol.families, or '*' for every family
    values: Mapping[str, Any]
    source: str  # file and lines at the protocol's pinned commit
    schemes: tuple[str, ...] = SCHEMES
    dataset: str = "*"  # the finetuning (downstream) dataset, or '*'
    image_size: int | None = None  # e.g. RobustSSL's STL-10 settings depend on --resize


@dataclass(frozen=True)
class Protocol:
    """A named finetuning protocol: the source's defaults, the families it covers, its rules."""

    name: str
    description: str
    base: Mapping[str, Any]
    base_source: str
    families: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # family -> method patterns
    rules: tuple[Rule, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # family -> method parameters


# --------------------------------------------------------------------------- robustssl

_RSSL_BASE = {
    "epochs": 25,
    "batch_size": 128,
    "lr": 0.1,
    "milestones": (15, 20),
    "momentum": 0.9,
    "weight_decay": 2e-4,
    "augment": True,
    "trades_beta": 6.0,
    "dual_bn": False,
    "head_init": "zeros",
    "trades_start": "noise",  # utils.py trades_loss_dual: x + 0.001·N(0, 1)
    "eval_step_ratio": None,
    "best_epoch": False,
    "reported_epoch": "last",
}
_ACL_SLF_ALF = ("SLF", "ALF")

ROBUSTSSL_PROTOCOL = Protocol(
    name="robustssl",
    description="RobustSSL_Benchmark's vanilla finetuning, per method (the leaderboard's protocol)",
    base=_RSSL_BASE,
    base_source=(
        ROBUSTSSL + "vanilla_finetuning.py l.29-43 (batch 128, 25 epochs, wd 2e-4, lr 0.1, momentum 0.9, "
        "milestones 15,20), l.68-69 (--test_frequency 0: last epoch); utils.py l.406-411 (crop+flip), "
        "l.532-533 and l.550-551 (zero head)"
    ),
    families={
        "ACL": ("acl", "acl-ip", "acl-hn", "acl-iphn"),
        "DynACL": ("dynacl", "dynacl++"),
        "AdvCL": ("advcl",),
        "A-InfoNCE": ("advcl-ip", "advcl-hn", "advcl-iphn"),
        "DeACL": ("deacl",),
        "default branch": ("rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "simclr"),
    },
    rules=(
        Rule("*", {"train_attack_steps": 0}, "SLF trains on clean inputs", schemes=("SLF",)),
        Rule(
            "*",
            {"train_attack_steps": 10},
            ROBUSTSSL + "vanilla_finetuning.py l.49-50 (--num-steps-train 10); "
            "utils.py l.670-671 (ALF pgd_attack), l.677-692 (TRADES perturb_steps), l.596 and l.637 (LAMBDA2 6)",
            schemes=("ALF", "AFF"),
        ),
        # ACL (the suite's -ip/-hn/-iphn extensions of ACL get ACL's settings)
        Rule("ACL", {"milestones": (10, 20)}, ROBUSTSSL + "utils.py l.819", schemes=_ACL_SLF_ALF),
        Rule("ACL", {"batch_size": 512, "lr": 0.01}, ROBUSTSSL + "utils.py l.807-809", _ACL_SLF_ALF, "cifar10"),
        Rule("ACL", {"batch_size": 512, "lr": 0.05}, ROBUSTSSL + "utils.py l.810-812", _ACL_SLF_ALF, "cifar100"),
        Rule("ACL", {"batch_size": 512, "lr": 0.1}, ROBUSTSSL + "utils.py l.813-815", _ACL_SLF_ALF, "stl10", 96),
        Rule("ACL", {"batch_size": 128, "lr": 0.01}, ROBUSTSSL + "utils.py l.816-818", _ACL_SLF_ALF, "stl10", 32),
        Rule(
            "ACL",
            {"lr": 0.1, "batch_size": 128, "epochs": 100, "milestones": (40, 60), "dual_bn": True},
            ROBUSTSSL + "utils.py l.820-824; dual BN: vanilla_finetuning.py l.19 (--dualBN 1 default, not "
            "overridden for ACL in run_vanilla_tune.sh l.2), utils.py l.677-684 and l.602-642 (trades_loss_dual)",
            schemes=("AFF",),
        ),
        # DynACL, DynACL++
        Rule("DynACL", {"milestones": (10, 20)}, ROBUSTSSL + "utils.py l.842", schemes=_ACL_SLF_ALF),
        Rule("DynACL", {"batch_size": 512, "lr": 0.01}, ROBUSTSSL + "utils.py l.830-832", _ACL_SLF_ALF, "cifar10"),
        Rule("DynACL", {"batch_size": 512, "lr": 0.05}, ROBUSTSSL + "utils.py l.833-835", _ACL_SLF_ALF, "cifar100"),
        Rule("DynACL", {"batch_size": 512, "lr": 0.1}, ROBUSTSSL + "utils.py l.836-838", _ACL_SLF_ALF, "stl10", 96),
        Rule("DynACL", {"batch_size": 128, "lr": 0.01}, ROBUSTSSL + "utils.py l.839-841", _ACL_SLF_ALF, "stl10", 32),
        Rule(
            "DynACL",
            {"milestones": (15, 20), "batch_size": 128, "lr": 0.1, "dual_bn": True},
            ROBUSTSSL + "utils.py l.843-849; dual BN: vanilla_finetuning.py l.19, run_vanilla_tune.sh l.3",
            schemes=("AFF",),
        ),
        Rule("DynACL", {"milestones": (10, 20)}, ROBUSTSSL + "utils.py l.844-845", ("AFF",), "stl10", 96),
        # AdvCL, A-InfoNCE, DeACL: single BN (run_vanilla_tune.sh l.4-6 pass --dualBN 0)
        *(
            Rule(
                family,
                {"milestones": (15, 20), "batch_size": 512, "lr": 0.01},
                ROBUSTSSL + f"utils.py {lines[0]}",
                schemes=_ACL_SLF_ALF,
            )
            for family, lines in (("AdvCL", ("l.855-858",)), ("A-InfoNCE", ("l.866-869",)), ("DeACL", ("l.877-880",)))
        ),
        *(
            Rule(
                family,
                {"batch_size": 128, "milestones": (15, 20), "lr": 0.1},
                ROBUSTSSL + f"utils.py {lines}",
                schemes=("AFF",),
            )
            for family, lines in (("AdvCL", "l.859-862"), ("A-InfoNCE", "l.870-873"), ("DeACL", "l.881-884"))
        ),
        # methods outside --pretraining's choices: the function's last branch
        Rule(
            "default branch",
            {"batch_size": 128, "milestones": (15, 20), "lr": 0.1},
            ROBUSTSSL + "utils.py l.997-1000 (else branch; RoCL is not among vanilla_finetuning.py l.61-62's choices)",
        ),
    ),
)

# --------------------------------------------------------------------------- ainfonce

_ADVCL_SLF = AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py"
_ROCL_LINEAR = AINFONCE + "Asym-RoCL/linear_eval.py"
_ROCL_FINETUNE = AINFONCE + "Asym-RoCL/rocl_finetune.py"
_OFFICIAL = {"quirks": "official"}  # the released losses' arithmetic (bench.engine.losses, quirks='official')

AINFONCE_PROTOCOL = Protocol(
    name="ainfonce",
    description="the A-InfoNCE scripts (AdvCL half: finetuning_advCL_SLF.py; RoCL half: linear_eval.py, "
    "rocl_finetune.py), best-on-test epoch as they print it",
    base={
        "momentum": 0.9,
        "trades_beta": 6.0,
        "dual_bn": False,
        "head_init": "default",
        "trades_start": "noise",
        "best_epoch": True,
    },
    base_source=(
        AINFONCE + "Asym-AdvCL/finetuning_advCL_SLF.py l.94, l.164 (nn.Linear default initialisation); "
        "Asym-RoCL/rocl_finetune.py l.67-68, l.199 and linear_eval.py l.101, l.111"
    ),
    families={
        "AdvCL": ("advcl",),
        "AdvCL-variant": ("advcl-ip", "advcl-hn", "advcl-iphn"),
        "RoCL": ("rocl", "rocl-ip", "rocl-hn", "rocl-iphn"),
    },
    params={"AdvCL": _OFFICIAL, "AdvCL-variant": _OFFICIAL, "RoCL": _OFFICIAL},
    rules=(
        # AdvCL half: one script for SLF, ALF and AFF_trades
        *(
            Rule(
                family,
                {
                    "epochs": 25,
                    "batch_size": 512,
                    "lr": 0.1,
                    "milestones": (15, 20),
                    "weight_decay": 2e-4,
                    "augment": True,
                    "eval_step_ratio": None,
                    "reported_epoch": "best",
                },
                _ADVCL_SLF + " l.83-95 (batch 512, 25 epochs, lr 0.1, wd 2e-4), l.28-33 (crop+flip), l.345-351 and "
                "l.382 (lr ÷10 from epoch 15 and 20), l.181-187 and l.314 (PGD-20 8/255, 2/255), l.402-406 and "
                "l.433-434 (best test PGD-20 epoch)",
            )
            for family in ("AdvCL", "AdvCL-variant")
        ),
        Rule(
            "AdvCL-variant",
            {"lr": 0.01},
            AINFONCE + "Asym-AdvCL/shell/cifar10/advcl-{IP,HN,IPHN}-cifar10.sh l.5-6 (--learning_rate 0.01)",
            ("SLF", "ALF"),
            "cifar10",
        ),
        Rule("AdvCL", {"train_attack_steps": 0}, "SLF trains on clean inputs", schemes=("SLF",)),
        Rule("AdvCL-variant", {"train_attack_steps": 0}, "SLF trains on clean inputs", schemes=("SLF",)),
        *(
            Rule(
                family,
                {"train_attack_steps": 20},
                _ADVCL_SLF + " l.263-265 with l.139-142 (AttackPGD train=False: 20 steps)",
                schemes=("ALF",),
            )
            for family in ("AdvCL", "AdvCL-variant")
        ),
        *(
            Rule(
                family,
                {"train_attack_steps": 10},
                _ADVCL_SLF + " l.236-257 (AFF_trades: 10 steps of 2/255, beta 6)",
                schemes=("AFF",),
            )
            for family in ("AdvCL", "AdvCL-variant")
        ),
        # RoCL half, SLF: linear_eval.py (150 epochs, batch 1024) then robustness_test.py on the last epoch
        Rule(
            "RoCL",
            {
                "epochs": 150,
                "batch_size": 1024,
                "lr": 0.1,
                "milestones": (31, 51, 101),
                "weight_decay": 5e-4,
                "augment": False,
                "train_attack_steps": 0,
                "eval_step_ratio": 0.1,
                "reported_epoch": "last",
            },
            AINFONCE + "Asym-RoCL/shell/rocl-*.sh l.8-10 (--batch-size=1024 --epoch 150 --lr 0.1 --clean=True), "
            "l.13-15 (robustness_test.py --epsilon=0.0314 --alpha=0.00314 --k=20); linear_eval.py l.111 (wd 5e-4), "
            "l.163-166 (un-augmented 'ori' images), l.256-268 with l.303-308 (lr set after each epoch), l.315-316 "
            "(last epoch saved)",
            schemes=("SLF",),
        ),
        # RoCL half, ALF and AFF_trades: rocl_finetune.py
        Rule(
            "RoCL",
            {
                "epochs": 25,
                "batch_size": 1024,
                "lr": 0.1,
                "milestones": (16, 21),
                "weight_decay": 2e-4,
                "augment": False,
                "eval_step_ratio": 0.1,
                "reported_epoch": "best",
            },
            AINFONCE + "Asym-RoCL/shell/rocl-*.sh l.16-24 (--batch-size=1024 --epoch 25 --lr 0.1 --epsilon=0.0314 "
            "--alpha=0.00314); rocl_finetune.py l.65-66 (wd 2e-4), l.290-293 ('ori' images), l.427-437 with "
            "l.483-488 (lr set after each epoch), l.470-478 (evaluation PGD-20 at --epsilon/--alpha), l.490-500 "
            "(best test PGD-20 epoch)",
            schemes=("ALF", "AFF"),
        ),
        Rule(
            "RoCL",
            {"train_attack_steps": 20},
            _ROCL_FINETUNE + " l.227-234 and l.303-305 (AttackPGD 8/255, 2/255, train=False: 20 steps, l.151-154)",
            schemes=("ALF",),
        ),
        Rule(
            "RoCL",
            {"train_attack_steps": 10},
            _ROCL_FINETUNE + " l.322-342 (AFF_trades: 10 steps of 2/255, beta 6)",
            schemes=("AFF",),
        ),
    ),
)

# --------------------------------------------------------------------------- dynacl

DYNACL = "PKU-ML/DYNACL@7d143db "
_DYNACL_LF = DYNACL + "test_LF.py"
_DYNACL_AFF = DYNACL + "test_AFF.py"

DYNACL_PROTOCOL = Protocol(
    name="dynacl",
    description="DynACL's test_LF.py / test_AFF.py for every method (reused by AIR and ASTrA: the de-facto "
    "protocol of the 2023-2025 papers), last epoch",
    base={
        "epochs": 25,
        "batch_size": 512,
        "lr": 0.01,
        "milestones": (10, 20),
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "augment": True,
        "train_attack_steps": 0,
        "trades_beta": 6.0,
        "dual_bn": False,
        "head_init": "zeros",
        "trades_start": "noise",
        "eval_step_ratio": None,
        "best_epoch": False,
        "reported_epoch": "last",
    },
    base_source=(
        _DYNACL_LF + " l.29-40 (batch 512, 25 epochs, wd 2e-4, lr 0.01, momentum 0.9), l.62 (lr ÷10 at 10, 20), "
        "l.71 (--test_frequency 0: last epoch), l.91-92 (crop+flip), l.140 and l.161 (encoder in eval mode), "
        "l.333-335 (zero head, in the --cvt_state_dict branch run), l.277-279 (final PGD-20 at 8/255, 2/255)"
    ),
    families={
        # test_AFF.py builds a dual-BN model (l.239); single-BN encoders get the same TRADES through their branch
        "dual BN": ("acl*", "advcl*", "dynacl*", "*-air*"),
        "single BN": ("rocl*", "simclr*", "deacl*"),
    },
    rules=(
        Rule(
            "*",
            {"train_attack_steps": 10},
            _DYNACL_LF + " l.47 (--num-steps-train 10), l.157-159 (ALF: the head on PGD cross-entropy examples)",
            schemes=("ALF",),
        ),
        Rule(
            "*",
            {"batch_size": 128, "lr": 0.1, "milestones": (15, 20), "train_attack_steps": 10, "trades_start": "clean"},
            _DYNACL_AFF + " l.33-56 (batch 128, 25 epochs, wd 2e-4, lr 0.1, 10 steps, beta 6), l.69 (÷10 at 15, 20), "
            "l.261-263 (zero head); utils.py l.403-439 (trades_loss_dual: the KL attack starts at x itself, l.410)",
            schemes=("AFF",),
        ),
        Rule(
            "dual BN",
            {"dual_bn": True},
            _DYNACL_AFF + " l.147-154 (natural_mode='normal': clean logits through BN 'normal', adversarial ones "
            "through 'pgd'), l.239 (bn_names normal, pgd)",
            schemes=("AFF",),
        ),
    ),
)

UNIFIED_PROTOCOL = Protocol(
    name="unified",
    description="the suite's own: one set of finetuning settings for every method (finetune.* fields)",
    base={},
    base_source="acl-bench docs/design.md §5 (the run's FinetuneConfig)",
)

PROTOCOL_TABLE: dict[str, Protocol] = {
    protocol.name: protocol for protocol in (UNIFIED_PROTOCOL, ROBUSTSSL_PROTOCOL, AINFONCE_PROTOCOL, DYNACL_PROTOCOL)
}


# --------------------------------------------------------------------------- resolution
