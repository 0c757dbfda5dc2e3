"""The package's levels hold: no module imports a higher level, no import cycles, no bench import
hidden inside a function (but the command line's marked ``# deferred:`` ones), no module far over 400
lines.

Read from the source with ``ast`` (nothing is imported), so a violation is reported as the edge that
breaks the rule. ``scripts/layers.py`` prints the same measurements for a person (levels, longest
import chain, cycles, function-level imports, module sizes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import layers  # noqa: E402  (scripts/ is not a package)

GRAPH = layers.import_graph(ROOT)


def test_every_module_has_a_level():
    assert [name for name in GRAPH.modules if layers.level_of(name) is None] == []


def test_no_module_imports_a_higher_level():
    assert layers.upward_edges(GRAPH) == []


def test_no_import_cycles():
    assert layers.cycles(GRAPH) == []


def test_bench_imports_inside_functions_are_only_the_cli_s_marked_ones():
    """An import of the package inside a function hides a cycle or an upward edge from a reader;
    only the command line may defer one (so ``bench --help`` does not load torch), each line saying
    what it defers: ``# deferred: torch``. Third-party imports are not looked at."""
    assert GRAPH.undeclared == []
    assert all(module.startswith("bench.cli") for module, _ in GRAPH.deferred)


def test_modules_stay_near_400_lines():
    """No module passes ``MAX_LINES`` (split a module by job before it does)."""
    assert layers.over_size(GRAPH) == {}


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself fails on a planted upward import, a planted cycle and a deferred import."""
    package = tmp_path / "bench"
    for folder, text in {
        "engine/low.py": "from bench.runs import high\n",
        "runs/high.py": "from bench.runs import other\n",
        "runs/other.py": "from bench.runs import high\n\ndef f():\n    from bench.engine import low\n",
        "runs/marked.py": "def f():\n    from bench.engine import low  # deferred: torch\n",
        "cli/app.py": "def f():\n    from bench.runs import (  # deferred: torch\n        high,\n    )\n\n"
        "def g():\n    from bench.runs import other\n",
    }.items():
        path = package / folder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    graph = layers.import_graph(tmp_path)
    assert layers.upward_edges(graph) == [("bench.engine.low", "bench.runs.high")]
    assert layers.cycles(graph) == [["bench.engine.low", "bench.runs.high", "bench.runs.other"]]  # deferred edges count
    assert graph.deferred == [
        ("bench.cli.app", "bench.runs.high"),
        ("bench.cli.app", "bench.runs.other"),
        ("bench.runs.marked", "bench.engine.low"),
        ("bench.runs.other", "bench.engine.low"),
    ]
    # allowed: the CLI's marked import (the mark on any line of the statement); refused: the CLI's
    # unmarked one, and one outside the CLI even when marked
    assert graph.undeclared == [
        ("bench.cli.app", "bench.runs.other"),
        ("bench.runs.marked", "bench.engine.low"),
        ("bench.runs.other", "bench.engine.low"),
    ]


@pytest.mark.parametrize("old", ["bench.method", "bench.registry", "bench.results", "bench.losses"])
def test_old_module_names_keep_working_with_a_warning(old):
    """Plugins written against the flat layout import ``bench.method`` etc.: the same module object
    comes back (so classes and registries are shared), with a DeprecationWarning naming the new place."""
    import importlib

    import bench

    new = bench.MOVED[old.removeprefix("bench.")]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
