"""The smallest `bench run` that still exercises every stage: one epoch, SLF, 16 test images at 8 px, CPU.

Shared by the tests that run the CLI end to end, so a change to what "tiny" means is made once.
"""

import shutil

# What a tiny run leaves out of its evaluation and report (each has tests of its own); also for the tests of
# `bench evaluate`/`finetune`
TINY_EVALUATION = [
    "--set",
    "evaluate.epsilon_curve=",
    "--set",
    "evaluate.sanity=false",  # its stronger PGD is 3/4 of a tiny evaluation; tests/test_evaluate.py tests the checks
    "--set",
    "evaluate.corruptions=none",  # the corrupted copies cost 15 % of a tiny run; tests/test_corruption*.py test them
    "--no-figures",  # most of a report's time; the report's own tests (tests/test_report*.py) draw them
]
# A tiny run's model and attack: the digits' own 8 px (a quarter of the smoke preset's 16 px pixels) and one
# pretraining PGD step (most of a tiny run's time is PGD; the attacks have their own tests)
TINY_PRETRAINING = ["--set", "attack.steps=1", "--set", "data.image_size=8"]
TINY = [
    "--epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--n-eval",
    "16",
    "--schemes",
    "SLF",
    "--attacks",
    "clean,pgd20",
    *TINY_EVALUATION,
    "--set",
    "pretrain.batch_size=256",
    *TINY_PRETRAINING,
    "--device",
    "cpu",
    "--quiet",
]
TINY_WITH_FIGURES = [flag for flag in TINY if flag != "--no-figures"]  # for a test that reads the figures


def copy_store(shared, destination):
    """A writable copy of a shared run's folders (``r/``, ``rep/``) under ``destination``."""
    for name in ("r", "rep"):
        if (shared / name).exists():
            shutil.copytree(shared / name, destination / name, symlinks=True)
    return destination
