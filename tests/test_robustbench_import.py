"""RobustBench's import path: ``autoattack`` is aliased to ``pyautoattack`` before robustbench is imported,
and "not installed" is told from "failed to import".

robustbench is not installed here (no network), so a stand-in package on ``sys.path`` imports what
robustbench 1.1's ``eval.py`` imports (``from autoattack import AutoAttack``, ``from autoattack.state
import EvaluationState``) and loads a model file from ``model_dir`` the way its ``load_model`` does.
"""

from __future__ import annotations

import sys

import pytest
import torch

from bench.runs.external import alias_autoattack, load_robustbench_model

UTILS = """
from autoattack import AutoAttack
from autoattack.state import EvaluationState
import torch


def load_model(model_name, dataset, threat_model, model_dir):
    checkpoint = torch.load(f"{model_dir}/{dataset}/{threat_model}/{model_name}.pt", weights_only=True)
    model = torch.nn.Linear(4, 2)
    model.load_state_dict(checkpoint["state_dict"])
    return model
"""


@pytest.fixture
def fresh_modules(monkeypatch):
    """Each test imports robustbench and autoattack afresh; whatever it imported is dropped afterwards."""
    before = set(sys.modules)
    for name in [name for name in sys.modules if name.split(".")[0] in ("robustbench", "autoattack")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("robustbench", "autoattack"):
            del sys.modules[name]


def _stand_in(tmp_path, monkeypatch, utils: str) -> None:
    package = tmp_path / "site" / "robustbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(utils)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_the_alias_gives_robustbench_the_pyautoattack_modules(tmp_path, monkeypatch, fresh_modules):
    import pyautoattack
    import pyautoattack.state

    _stand_in(tmp_path, monkeypatch, UTILS)
    model = torch.nn.Linear(4, 2)
    (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "models" / "cifar10" / "Linf" / "Mine2024.pt")
    loaded = load_robustbench_model("Mine2024", model_dir=tmp_path / "models")
    assert sys.modules["autoattack"] is pyautoattack and sys.modules["autoattack.state"] is pyautoattack.state
    assert sys.modules["robustbench.utils"].AutoAttack is pyautoattack.AutoAttack
    x = torch.rand(3, 4)
    assert torch.equal(loaded(x), model(x)) and not loaded.training


def test_no_alias_over_a_real_autoattack(tmp_path, monkeypatch, fresh_modules):
    (tmp_path / "site" / "autoattack").mkdir(parents=True)
    (tmp_path / "site" / "autoattack" / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert alias_autoattack() is False
    import autoattack

    assert autoattack.REAL


def test_a_robustbench_that_fails_to_import_is_not_called_missing(tmp_path, monkeypatch, fresh_modules):
    _stand_in(tmp_path, monkeypatch, "import a_dependency_that_is_missing\n")
    with pytest.raises(ImportError) as error:
        load_robustbench_model("Mine2024", model_dir=tmp_path)
    assert str(error.value) == (
        "robustbench is installed but failed to import: "
        "ModuleNotFoundError: No module named 'a_dependency_that_is_missing'"
    )


def test_a_missing_robustbench_is_called_missing(monkeypatch, fresh_modules):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    with pytest.raises(ImportError, match=r"^robustbench is not installed: pip install 'acl-bench\[robustbench\]'$"):
        load_robustbench_model("Mine2024")
