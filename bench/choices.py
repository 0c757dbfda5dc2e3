"""The closed sets of names the ``bench`` command offers: presets, protocols, schemes, attacks,
devices, datasets, checkpoint formats, launchers, post stages and speed stages.

They live here, at the lowest level and free of torch, so that the command's parser (and its
``--help``) is built without loading the modules that use them; each of those modules imports its
table from here (``bench.config.SCHEMES is bench.choices.SCHEMES``), so there is one list of each.
"""

from __future__ import annotations

PRESETS = ("smoke", "paper")
SCHEMES = ("SLF", "ALF", "AFF")
ATTACKS = ("clean", "pgd20", "autoattack", "apgd-ce")
DEVICES = ("auto", "cpu", "cuda")
PROTOCOLS = ("unified", "robustssl", "ainfonce", "dynacl")  # their settings: bench.evaluation.protocols

# The datasets bench.engine.data loads, by name, with what each is.
DATASETS: dict[str, str] = {
    "digits": "the UCI handwritten digits (embedded in the package, no download), 10 classes",
    "cifar10": "CIFAR-10 via torchvision (--download to fetch)",
    "cifar100": "CIFAR-100 via torchvision (--download to fetch)",
    "cifar10c": "evaluation only: CIFAR-10, plus the official CIFAR-10-C files (DATA_DIR/CIFAR-10-C/*.npy)",
    "cifar100c": "evaluation only: CIFAR-100, plus the official CIFAR-100-C files (DATA_DIR/CIFAR-100-C/*.npy)",
    "stl10": "STL-10 labelled splits via torchvision, resized to the run's resolution",
    "folder": "local image folder with train/ and test/ sub-folders (--data-dir)",
}

# Encoder checkpoint formats bench.engine.checkpoints reads (ours, then the released codebases').
CHECKPOINT_FORMATS = (
    "bench",
    "robustssl",
    "advcl",
    "rocl",
    "acl",
    "dynacl",
    "dynacl++",
    "dynacl++-dual",
    "deacl",
    "deacl-teacher",
)
LAUNCHERS = ("local", "submitit-local", "slurm")  # bench.runs.sweep
POST_STAGES = ("", "pp")  # '' = none; 'pp' = DynACL++ LP-AFT (bench.methodkit.post)
SPEED_STAGES = ("pretrain", "eval", "epoch")  # what `bench speed` measures (bench.cli.speed)
TRACKERS = ("local", "tensorboard", "mlflow", "wandb", "none")  # --track: bench.runs.tracking
