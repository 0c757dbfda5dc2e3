"""The smallest `bench run` that still exercises every stage: one epoch, SLF, 16 test images, CPU.

Shared by the tests that run the CLI end to end, so a change to what "tiny" means is made once.
"""

import shutil

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
    "--set",
    "evaluate.epsilon_curve=",
    "--set",
    "evaluate.corruptions=none",  # the corrupted copies cost 15 % of a tiny run; tests/test_corruption*.py test them
    "--set",
    "pretrain.batch_size=256",
    "--device",
    "cpu",
    "--quiet",
]


def copy_store(shared, destination):
    """A writable copy of a shared run's folders (``r/``, ``rep/``) under ``destination``."""
    for name in ("r", "rep"):
        if (shared / name).exists():
            shutil.copytree(shared / name, destination / name, symlinks=True)
    return destination
