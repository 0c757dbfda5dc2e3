"""Plant a change in every published setting, one at a time, and check that a targeted test fails.

mutmut (pyproject ``[tool.mutmut]``) mutates functions; the settings that fidelity audit 2 found unguarded are
data: the protocol tables (``bench/evaluation/protocols.py``), the ``Params`` defaults (``methods/*.py``,
``bench/methodkit/method.py``, ``bench/methodkit/post.py``) and the presets (``bench/config.py``). This script
finds each literal value there with ``ast`` (a protocol field of a table, a dataclass field's default, a
keyword of a preset's config), changes it (a number doubled or moved by one, a flag flipped, a choice
swapped for another allowed one), runs only the given test files with ``-x``, and restores the file::

    PYTHONPATH=$PWD python scripts/mutate_settings.py bench/evaluation/protocols.py \\
        --tests tests/test_published_defaults.py tests/test_settings_applied.py tests/test_protocols.py

It prints one line per mutant (KILLED with the first failing test, or SURVIVED) and the kill rate. The
working tree must be clean for the mutated file: it is restored from its own text after every mutant.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.evaluation.protocols import PROTOCOL_FIELDS  # the table's field names

CHOICES = {  # a string setting and the value it is swapped for
    "noise": "clean",
    "clean": "noise",
    "default": "zeros",
    "zeros": "default",
    "last": "best",
    "best": "last",
    "teacher": "scratch",
    "dynacl": "air-rcs",
    "none": "official",
}


@dataclass(frozen=True)
class Mutant:
    line: int
    col: int
    end_col: int
    old: str
    new: str
    where: str


def changed(node: ast.Constant) -> str | None:
    """The source text of a changed value, or None for a literal this tool leaves alone (text, None)."""
    value = node.value
    if isinstance(value, bool):
        return repr(not value)
    if isinstance(value, int):
        return repr(value + 1)
    if isinstance(value, float):
        return repr(value * 2 if value else 1.0)
    if isinstance(value, str) and value in CHOICES:
        return repr(CHOICES[value])
    return None


def literals(node: ast.AST) -> list[ast.Constant]:
    """The constants of a value: itself, or the elements of a tuple/list; a unary minus is left out."""
    if isinstance(node, ast.Constant):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [element for element in node.elts if isinstance(element, ast.Constant)]
    return []


KINDS = ("tables", "params", "presets")


def targets(tree: ast.AST, fields: set[str], kinds: tuple[str, ...] = KINDS) -> list[tuple[ast.Constant, str]]:
    """(constant, what it sets) for each setting of the module: ``tables``, a dict entry named by a protocol
    field; ``params``, a default of a ``*Params`` or ``*Config`` dataclass; ``presets``, a keyword of a preset's
    ``*Config(...)`` call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and "tables" in kinds:  # a protocol table: {"lr": 0.1, ...}
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value in fields:
                    found += [(constant, str(key.value)) for constant in literals(value)]
        elif isinstance(node, ast.ClassDef) and "params" in kinds and node.name.endswith(("Params", "Config")):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and statement.value is not None:
                    name = f"{node.name}.{ast.unparse(statement.target)}"
                    found += [(constant, name) for constant in literals(statement.value)]
        elif isinstance(node, ast.Call) and "presets" in kinds and ast.unparse(node.func).endswith("Config"):
            found += [
                (constant, f"{ast.unparse(node.func)}.{keyword.arg}")
                for keyword in node.keywords
                for constant in literals(keyword.value)
            ]
    return found


def mutants(path: Path, fields: set[str], kinds: tuple[str, ...] = KINDS) -> list[Mutant]:
    text = path.read_text()
    made = {}
    for constant, where in targets(ast.parse(text), fields, kinds):
        new = changed(constant)
        if new is None or constant.lineno != constant.end_lineno:
            continue
        old = ast.get_source_segment(text, constant)
        made[(constant.lineno, constant.col_offset)] = Mutant(
            constant.lineno, constant.col_offset, constant.end_col_offset, old, new, where
        )
    return [made[key] for key in sorted(made)]


def apply(text: str, mutant: Mutant) -> str:
    lines = text.splitlines(keepends=True)
    line = lines[mutant.line - 1]
    lines[mutant.line - 1] = line[: mutant.col] + mutant.new + line[mutant.end_col :]
    return "".join(lines)


def first_failure(output: str) -> str:
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return failed[0].split(" - ")[0].split(" ", 1)[1] if failed else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="modules whose settings are mutated")
    parser.add_argument("--tests", nargs="+", required=True, help="the targeted test files (never the whole suite)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which settings to mutate")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args(argv)
    fields = set(PROTOCOL_FIELDS)
    killed = total = 0
    survivors = []
    for path in args.files:
        original = path.read_text()
        for mutant in mutants(path, fields, tuple(args.kinds)):
            label = f"{path}:{mutant.line} {mutant.where} {mutant.old} -> {mutant.new}"
            if args.list:
                print(label)
                continue
            path.write_text(apply(original, mutant))
            try:
                run = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args.tests],
                    capture_output=True,
                    text=True,
                )
            finally:
                path.write_text(original)
            total += 1
            failure = first_failure(run.stdout)
            killed += bool(failure)
            if not failure:
                survivors.append(label)
            print(f"{'KILLED ' if failure else 'SURVIVED'} {label}  {failure}", flush=True)
    if total:
        print(f"killed {killed}/{total} ({100 * killed / total:.1f} %); survivors: {len(survivors)}")
        for label in survivors:
            print(f"  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
