"""Print the numbers of a tiny CPU pretraining per method: loss history and a weight checksum.

A recorded comparison, not a test: run it on two commits and diff the outputs to show that a
change leaves the default CPU numbers bit-identical (one thread, so CPU kernels sum in one order).

    PYTHONPATH=$PWD python scripts/cpu_numbers.py > numbers.txt
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from bench.config import smoke_preset
from bench.engine.data import load_digits
from bench.methodkit import registry
from bench.runs.train import pretrain
from bench.store.results import RunDir

METHODS = ("simclr", "acl", "acl-iphn", "rocl", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn")


def checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(methods: list[str]) -> None:
    torch.set_num_threads(1)
    images = load_digits(16).x_train[:128]
    config = smoke_preset()
    config.pretrain.epochs, config.pretrain.batch_size, config.attack.steps = 2, 32, 2
    for name in methods:
        cls = registry.get(name)
        method = cls(cls.make_params(dict(cls.published("smoke", "digits").params)))
        torch.manual_seed(0)
        model = method.build_model(config.model.arch)
        with tempfile.TemporaryDirectory() as folder:
            result = pretrain(method, model, images, config, RunDir(Path(folder)), torch.device("cpu"), resume=False)
        losses = " ".join(repr(row["loss"]) for row in result.history)
        print(f"{name} {checksum(model)} {losses}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(METHODS))
